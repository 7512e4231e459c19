#include "client/train/sequences.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace fedlora::client {

WindowSource::WindowSource(std::span<const TokenId> stream, std::size_t seq_len, TokenId bos)
    : stream_(stream), windows_(MakeWindows(stream.size(), seq_len)), bos_(bos) {
  // Without BOS a window predicts its own tokens 1..T-1, so a 1-token window has no target.
  if (bos_ < 0) {
    std::erase_if(windows_, [](const TokenWindow& w) { return w.length < 2; });
  }
}

WindowSource::WindowSource(std::span<const TokenId> stream, std::vector<TokenWindow> windows,
                           TokenId bos)
    : stream_(stream), windows_(std::move(windows)), bos_(bos) {
  for (const TokenWindow& w : windows_) {
    FEDLORA_CHECK(w.begin + w.length <= stream_.size());
    FEDLORA_CHECK(w.length == windows_.front().length);
  }
}

void WindowSource::Truncate(std::size_t n) {
  if (windows_.size() > n) windows_.resize(n);
}

Batch WindowSource::MakeBatch(std::span<const std::size_t> picks) const {
  FEDLORA_CHECK(!picks.empty());
  const auto b = static_cast<std::int64_t>(picks.size());
  const std::size_t length = windows_.at(picks[0]).length;
  // With BOS: T = length positions; without: the window's first token is context only.
  const auto t = static_cast<std::int64_t>(bos_ >= 0 ? length : length - 1);
  Batch batch{at::empty({b, t}, at::kLong), at::empty({b, t}, at::kLong),
              std::vector<std::int64_t>(picks.size(), -1)};
  std::int64_t* in = batch.inputs.data_ptr<std::int64_t>();
  std::int64_t* out = batch.targets.data_ptr<std::int64_t>();
  for (std::int64_t row = 0; row < b; ++row) {
    const TokenWindow& w = windows_.at(picks[row]);
    FEDLORA_CHECK(w.length == length);
    const TokenId* s = stream_.data() + w.begin;
    if (bos_ >= 0) {
      in[row * t] = bos_;
      for (std::int64_t k = 0; k < t; ++k) {
        if (k + 1 < t) in[row * t + k + 1] = s[k];
        out[row * t + k] = s[k];
      }
    } else {
      for (std::int64_t k = 0; k < t; ++k) {
        in[row * t + k] = s[k];
        out[row * t + k] = s[k + 1];
      }
    }
  }
  return batch;
}

std::uint64_t WindowSource::CountTargets(std::span<const std::size_t> picks) const {
  std::uint64_t n = 0;
  for (std::size_t p : picks) n += windows_.at(p).length - (bos_ >= 0 ? 0 : 1);
  return n;
}

Result<ExampleSource> ExampleSource::Make(std::vector<SequenceView> examples, std::size_t max_len,
                                          TokenId pad) {
  for (std::size_t i = 0; i < examples.size(); ++i) {
    const SequenceView& e = examples[i];
    if (e.tokens.size() < 2) {
      return InvalidArgument("example ", i, " has ", e.tokens.size(),
                             " tokens; it needs at least 2 (a prompt and a target)");
    }
    if (e.target_begin < 1 || e.target_begin >= e.tokens.size()) {
      return InvalidArgument("example ", i, ": its response starts at token ", e.target_begin,
                             " of ", e.tokens.size(), " (must be in [1, ", e.tokens.size(), "))");
    }
    if (e.tokens.size() - 1 > max_len) {
      return InvalidArgument("example ", i, " has ", e.tokens.size(),
                             " tokens, more than the context length ", max_len,
                             " + 1 (lower data.max_tokens)");
    }
  }
  return ExampleSource(std::move(examples), pad);
}

void ExampleSource::Truncate(std::size_t n) {
  if (examples_.size() > n) examples_.resize(n);
}

Batch ExampleSource::MakeBatch(std::span<const std::size_t> picks) const {
  FEDLORA_CHECK(!picks.empty());
  std::size_t longest = 0;
  for (std::size_t p : picks) longest = std::max(longest, examples_.at(p).tokens.size() - 1);
  const auto b = static_cast<std::int64_t>(picks.size());
  const auto t = static_cast<std::int64_t>(longest);
  Batch batch{at::full({b, t}, static_cast<std::int64_t>(pad_), at::kLong),
              at::full({b, t}, kIgnoreIndex, at::kLong), {}};
  batch.answer_positions.reserve(picks.size());
  std::int64_t* in = batch.inputs.data_ptr<std::int64_t>();
  std::int64_t* out = batch.targets.data_ptr<std::int64_t>();
  for (std::int64_t row = 0; row < b; ++row) {
    const SequenceView& e = examples_.at(picks[row]);
    const auto n = static_cast<std::int64_t>(e.tokens.size()) - 1;
    for (std::int64_t k = 0; k < n; ++k) {
      in[row * t + k] = e.tokens[k];
      if (static_cast<std::size_t>(k + 1) >= e.target_begin) out[row * t + k] = e.tokens[k + 1];
    }
    batch.answer_positions.push_back(static_cast<std::int64_t>(e.target_begin) - 1);
  }
  return batch;
}

std::uint64_t ExampleSource::CountTargets(std::span<const std::size_t> picks) const {
  std::uint64_t n = 0;
  for (std::size_t p : picks) n += examples_.at(p).tokens.size() - examples_.at(p).target_begin;
  return n;
}

}  // namespace fedlora::client
