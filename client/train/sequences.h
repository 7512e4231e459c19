// sequences.h — what the trainer trains and evaluates on: batches of (input, target) token rows.
//
// Two sources share one interface:
//  - WindowSource: fixed-length windows of one token stream (plain text). With a BOS id the input
//    is [BOS, w0..w_{T-2}] and the targets [w0..w_{T-1}] (the llama2.c checkpoints were trained on
//    BOS-prefixed stories); without one (Qwen2) the input is [w0..w_{T-2}], targets [w1..w_{T-1}].
//  - ExampleSource: tokenized examples of different lengths (instruction, classification, GSM8K),
//    each `tokens` = [BOS?] prompt response [EOS?]: input tokens[0..n-2], target tokens[1..n-1],
//    and only targets at positions >= target_begin count (the response: prompt tokens are masked
//    out of the loss). Rows are right-padded; causal attention means padding never changes the
//    real positions' logits.
// Masked and padded targets hold kIgnoreIndex, which the cross-entropy skips.
//
// Sources hold views: the stream or examples must outlive them. Immutable, thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

inline constexpr std::int64_t kIgnoreIndex = -100;  // cross_entropy's default ignore_index.

struct Batch {
  at::Tensor inputs;    // int64 [B, T] (CPU).
  at::Tensor targets;   // int64 [B, T]; kIgnoreIndex where no loss is taken.
  // Per row, the input position whose logits predict the row's first response token
  // (target_begin - 1), for label-token accuracy; -1 for windows.
  std::vector<std::int64_t> answer_positions;
};

class SequenceSource {
 public:
  virtual ~SequenceSource() = default;
  virtual std::size_t size() const = 0;  // Number of rows it can produce.
  // A batch of the rows at `picks` (each < size(), at least one).
  virtual Batch MakeBatch(std::span<const std::size_t> picks) const = 0;
  // Target tokens the rows at `picks` contribute to the loss.
  virtual std::uint64_t CountTargets(std::span<const std::size_t> picks) const = 0;
};

class WindowSource final : public SequenceSource {
 public:
  // Windows of `seq_len` tokens (MakeWindows) of `stream`; `bos` < 0 means no BOS prefix.
  WindowSource(std::span<const TokenId> stream, std::size_t seq_len, TokenId bos);
  // Explicit windows (all of one length, inside the stream).
  WindowSource(std::span<const TokenId> stream, std::vector<TokenWindow> windows, TokenId bos);
  std::size_t size() const override { return windows_.size(); }
  Batch MakeBatch(std::span<const std::size_t> picks) const override;
  std::uint64_t CountTargets(std::span<const std::size_t> picks) const override;
  // Keeps only the first `n` windows (evaluation caps).
  void Truncate(std::size_t n);

 private:
  std::span<const TokenId> stream_;
  std::vector<TokenWindow> windows_;
  TokenId bos_;
};

// One tokenized example as the trainer sees it: target positions k+1 >= target_begin count.
struct SequenceView {
  std::span<const TokenId> tokens;  // At least 2 tokens.
  std::size_t target_begin = 1;     // In [1, tokens.size()).
};

class ExampleSource final : public SequenceSource {
 public:
  // kInvalidArgument: an example with fewer than 2 tokens, target_begin outside
  // [1, tokens.size()), or longer than `max_len` + 1 tokens (the model's context); names it.
  static Result<ExampleSource> Make(std::vector<SequenceView> examples, std::size_t max_len,
                                    TokenId pad);
  std::size_t size() const override { return examples_.size(); }
  Batch MakeBatch(std::span<const std::size_t> picks) const override;
  std::uint64_t CountTargets(std::span<const std::size_t> picks) const override;
  const SequenceView& example(std::size_t i) const { return examples_.at(i); }
  void Truncate(std::size_t n);

 private:
  ExampleSource(std::vector<SequenceView> examples, TokenId pad)
      : examples_(std::move(examples)), pad_(pad) {}
  std::vector<SequenceView> examples_;
  TokenId pad_;
};

}  // namespace fedlora::client
