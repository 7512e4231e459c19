// examples.h — supervised training examples: Records rendered by a prompt template, tokenised
// with an exact prompt/response boundary, partitioned across clients and split for evaluation.
// Torch-free.
//
// An Example is tokens = [BOS] + prompt + response + [EOS] (BOS/EOS only when the tokenizer has
// them). The loss covers the response (and EOS) only: the tokens at positions >= prompt_len.
//
// How the trainer batches Examples (MakePaddedBatch does exactly this, torch-free):
//   * Right-pad to the longest example of the batch, L = max(tokens.size()); the model reads
//     inputs[t] = tokens[t] for t in [0, L-1) and predicts targets[t] = tokens[t + 1].
//   * The loss weight of (row, t) is 1 when prompt_len <= t + 1 < tokens.size(), else 0, so
//     padding and prompt positions never contribute. Average the token losses over the weights'
//     sum (per batch) so long responses weigh as much as they have tokens.
//   * Causal attention makes right padding invisible to the real positions; no attention mask is
//     needed for training. Pad with any valid id (EOS, or 0): it is never a weighted target.
//   * Classification accuracy: the logits at position prompt_len - 1 (the last prompt token)
//     predict the first response token; LabelSet::Predict takes the argmax over each class's first
//     label token, and the prediction is right when it equals Example::label.
//   * Generation (GSM8K exact match): feed tokens[0, prompt_len), decode greedily until EOS, the
//     ChatML "<|im_end|>" or a budget, Decode the new tokens, and compare
//     ExtractFinalAnswer(text) (record_sources.h) with Example::answer.
//
// Every function is thread-safe; a TextTokenizer is only read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "client/config.h"
#include "client/data/prompt_template.h"
#include "client/data/record_partition.h"
#include "client/data/record_sources.h"
#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

struct Example {
  std::vector<TokenId> tokens;  // [BOS] + prompt + response + [EOS].
  std::size_t prompt_len = 0;   // Context tokens (BOS included); >= 1 and < tokens.size().
  std::int32_t label = -1;      // Class index for classification, else -1.
  std::string answer;           // GSM8K: normalised final answer for exact match, else "".
  std::size_t record = 0;       // Index of the record (in the loaded file) it came from.
  bool truncated = false;       // Prompt tokens were cut to fit max_tokens.
  std::size_t num_targets() const { return tokens.size() - prompt_len; }
  friend bool operator==(const Example&, const Example&) = default;
};

// The tokens of `text` as it continues a sequence: Encode without the start-of-text behaviour
// some tokenizers have (SentencePiece's dummy-prefix space, which would turn " negative" into
// "  negative"). Computed as Encode("\n" + text) minus the tokens of Encode("\n") when those are
// a prefix of it (a newline never merges with what follows in the tokenizers we support), else
// plain Encode(text). Without BOS and EOS.
std::vector<TokenId> EncodeContinuation(const TextTokenizer& tokenizer, std::string_view text);

// Tokenises one (prompt, response) pair: the prompt with Encode (BOS first when the tokenizer has
// one), the response with EncodeContinuation, then EOS when the tokenizer has one. When the
// result is longer than `max_tokens` (0 = no limit), prompt tokens are removed from the left,
// just after BOS: the end of the prompt holds the cue the response follows ("### Response:\n",
// "\nSentiment:", "<|im_start|>assistant\n") and the response must stay whole. std::nullopt
// (the example is dropped) when even [BOS] + one prompt token + response + [EOS] does not fit,
// when the prompt is empty and the tokenizer has no BOS (no position would predict the first
// response token), or when there is nothing to learn (empty response and no EOS).
std::optional<Example> EncodeTurn(const RenderedTurn& turn, const TextTokenizer& tokenizer,
                                  std::size_t max_tokens);

struct EncodeStats {
  std::size_t examples = 0;   // Kept.
  std::size_t truncated = 0;  // Kept with their prompt cut.
  std::size_t dropped = 0;    // Too long to keep.
};

// RenderRecord + EncodeTurn for records[i], i in `indices` (in that order); label and answer are
// copied from the record, `record` is set to i. Errors are RenderRecord's.
Result<std::vector<Example>> EncodeRecords(std::span<const Record> records,
                                           std::span<const std::size_t> indices,
                                           const PromptTemplate& tmpl,
                                           const TextTokenizer& tokenizer, std::size_t max_tokens,
                                           EncodeStats* stats);

// The verbalised classes of a classification task.
struct LabelSet {
  std::vector<std::string> words;            // Index = class, e.g. {" negative", " positive"}.
  std::vector<std::vector<TokenId>> tokens;  // EncodeContinuation of each word.
  std::vector<TokenId> first_tokens;         // tokens[c][0]; pairwise distinct.
  std::size_t size() const { return words.size(); }
  bool empty() const { return words.empty(); }
  // The class whose first label token has the largest logit in `logits` (one vocabulary row at
  // position prompt_len - 1); the lowest class on ties. Requires a non-empty set and every first
  // token < logits.size() (checked).
  std::int32_t Predict(std::span<const float> logits) const;
};
// kInvalidArgument when `words` has fewer than 2 entries, a word encodes to no tokens, or two
// words share their first token (naming both words and the token), which would make the
// first-token argmax unable to tell them apart (hint: add a distinguishing leading word).
Result<LabelSet> MakeLabelSet(std::span<const std::string> words, const TextTokenizer& tokenizer);

// ---- Batching (torch-free; the trainer wraps these arrays in tensors) -----------------------

struct PaddedBatch {
  std::size_t rows = 0;
  std::size_t cols = 0;                   // Longest example's length minus 1.
  std::vector<TokenId> inputs;            // rows x cols, row-major: tokens[t], then padding.
  std::vector<TokenId> targets;           // rows x cols: tokens[t + 1], then padding.
  std::vector<float> loss_weights;        // rows x cols: 1 on response targets, else 0.
  std::vector<std::int64_t> prompt_ends;  // Per row: prompt_len - 1, where the first response
                                          // token (the label token) is predicted.
  std::vector<std::int32_t> labels;       // Per row: Example::label.
};
// The examples at `which` (in that order) padded with `pad_id`, as described at the top.
// Requires a non-empty `which`, valid indices and well-formed examples (checked).
PaddedBatch MakePaddedBatch(std::span<const Example> examples, std::span<const std::size_t> which,
                            TokenId pad_id);

// ---- One client's supervised data -----------------------------------------------------------

struct ClientExampleStats {
  std::size_t file_records = 0;       // Records used from data.path (after max_records).
  std::size_t partition_records = 0;  // This client's partition.
  std::size_t train_records = 0;
  std::size_t heldout_records = 0;  // From the partition, or every record of eval_path.
  EncodeStats train;
  EncodeStats heldout;
  // Per class (classification formats only): records of each label in each split.
  std::vector<std::size_t> train_label_histogram;
  std::vector<std::size_t> heldout_label_histogram;
};

struct ClientExamples {
  RecordFormat format = RecordFormat::kAlpaca;
  PromptTemplate prompt_template;
  std::vector<Example> train;
  std::vector<Example> heldout;
  LabelSet labels;  // Classification formats only; empty otherwise.
  ClientExampleStats stats;
  // One line for logs: "sst2/classify: partition 3 of 8 (dirichlet a=0.5): 7012 records,
  // train 6311 [2790 3521], held out 701 [310 391], 0 truncated, 0 dropped".
  std::string Summary(const DataConfig& config) const;
};

// Steps 1-3 of LoadClientExamples for every client at once: the records of data.path (after
// max_records), their partitions, and eval_path's records (empty without one). Immutable, so
// the clients of one process can share it (CorpusCache::Records).
struct PartitionedRecords {
  RecordFormat format = RecordFormat::kAlpaca;
  std::vector<Record> records;
  Partitions partitions;
  std::vector<Record> eval_records;
};
Result<std::shared_ptr<const PartitionedRecords>> LoadPartitionedRecords(const DataConfig& config);

class CorpusCache;  // corpus_cache.h

// The whole pipeline for one client of a record format (data.format != text):
//   1. read data.path with the format's loader (max_text_chars applied);
//   2. when max_records > 0 and the file has more, keep a seeded sample of max_records records
//      (file order kept; seed derived from partition_seed, so every client keeps the same ones);
//   3. partition with {partition, num_partitions, partition_seed, dirichlet_alpha} and keep
//      partition partition_index;
//   4. held-out split: without eval_path, hold out heldout_fraction of the partition's records,
//      seeded by MixSeed(partition_seed, partition_index) as the text path does; with eval_path,
//      train on the whole partition and evaluate on every record of eval_path (same format), the
//      same shared test set on every client;
//   5. render with data.template (empty: the format's default) and encode (max_tokens).
// kInvalidArgument: a bad config value (names the data.* key), a malformed file (file, line,
// key), labels that share a first token. kNotFound / kDataLoss: the loaders'. kFailedPrecondition:
// this client's partition is empty, or no training example survived max_tokens. With `corpus`,
// steps 1-3 run once for every client sharing the cache.
Result<ClientExamples> LoadClientExamples(const DataConfig& config, const TextTokenizer& tokenizer,
                                          CorpusCache* corpus = nullptr);

// The template of `config` (data.template, or the format's default, with data.label_words when
// set). kInvalidArgument naming data.format / data.template / data.label_words.
Result<PromptTemplate> ResolvePromptTemplate(const DataConfig& config);

}  // namespace fedlora::client
