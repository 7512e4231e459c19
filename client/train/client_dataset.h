// client_dataset.h — one client's private data as the worker trains and evaluates on it: a
// plain-text token stream (data.format: text) or tokenized examples (instruction, chat, GSM8K,
// SST-2, SpamAssassin), behind the SequenceSource interface of sequences.h.
//
// Loading does the whole pipeline once (read, partition, hold out, tokenize); sources are cheap
// views made per task. A ClientDataset must not move while a source made from it is alive.
// Immutable after loading: safe to read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "client/config.h"
#include "client/data/corpus_cache.h"
#include "client/data/examples.h"
#include "client/data/text_dataset.h"
#include "client/model/text_tokenizer.h"
#include "client/train/sequences.h"
#include "common/status.h"

namespace fedlora::client {

class ClientDataset {
 public:
  // Loads `config` with `tokenizer`. `context` is the model's context length: examples longer
  // than context + 1 tokens are refused at load, so data.max_tokens is clamped to it.
  // Errors are the loaders' (naming the file, line and key) with the client's context added.
  // With `corpus`, text corpora (data.path of format text, data.init_path) are read and
  // partitioned once for every client sharing the cache.
  static Result<std::unique_ptr<ClientDataset>> Load(const DataConfig& config,
                                                     const TextTokenizer& tokenizer,
                                                     std::size_t context,
                                                     CorpusCache* corpus = nullptr);

  bool has_examples() const { return !text_mode_; }
  // Rows one epoch trains on: windows of `seq_len` tokens (text) or examples.
  std::uint64_t TrainRows(std::uint32_t seq_len) const;
  // Training rows: windows of `seq_len` (text) or the training examples (seq_len unused).
  std::unique_ptr<SequenceSource> TrainSource(std::uint32_t seq_len) const;
  // Held-out rows, the first `max_rows` (0 = all). Empty source when nothing is held out.
  std::unique_ptr<SequenceSource> HeldoutSource(std::uint32_t seq_len, std::uint64_t max_rows) const;
  // Rows for LoRA-SB's gradient estimate: data.init_path's text (windows), else with
  // data.init_from_train the training rows, else null. The first `max_rows` only.
  std::unique_ptr<SequenceSource> InitSource(std::uint32_t seq_len, std::uint64_t max_rows) const;

  // Classification: first label token per class and each held-out example's class; empty
  // otherwise.
  std::span<const TokenId> label_tokens() const { return label_tokens_; }
  std::span<const std::int32_t> heldout_labels() const { return heldout_labels_; }
  // Held-out examples with a reference answer (GSM8K), for exact match by generation.
  std::span<const Example> heldout_examples() const;
  bool has_answers() const { return has_answers_; }

  // Bytes of token ids and labels this dataset holds (its share of a client's resident state).
  std::uint64_t MemoryBytes() const;

  // One line for logs ("text: 8123 train tokens, ..." or the examples' summary).
  const std::string& summary() const { return summary_; }

 private:
  ClientDataset() = default;
  std::vector<SequenceView> Views(std::span<const Example> examples) const;

  bool text_mode_ = true;
  TokenId bos_ = -1;
  TokenId pad_ = 0;
  std::size_t context_ = 0;
  ClientData text_;
  std::vector<TokenId> init_stream_;
  ClientExamples examples_;
  std::vector<TokenId> label_tokens_;
  std::vector<std::int32_t> heldout_labels_;
  bool has_answers_ = false;
  bool init_from_train_ = false;
  std::string summary_;
};

// Judges GSM8K-style answers: the final answer extracted from `generated` text equals the
// reference `answer` (both normalised as in record_sources.h).
bool AnswerMatches(std::string_view generated, std::string_view answer);

}  // namespace fedlora::client
