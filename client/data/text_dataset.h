// text_dataset.h — a client's private text: corpus -> paragraphs -> partition -> train/held-out
// token streams -> fixed-length token windows. Torch-free.
//
// Every step is a pure function of its inputs and an explicit seed, so every client of a
// federation (and every rerun) derives the same partitions from the same corpus. Randomness uses
// std::mt19937_64 (fully specified by the standard) with our own shuffle and bounded draw,
// because std::shuffle and std::uniform_int_distribution differ between standard libraries.
//
// Knows nothing about models or tensors: windows are (begin, length) views into a stream, and
// the trainer turns them into tensors. Every function is thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "client/config.h"
#include "client/model/tokenizer.h"
#include "common/seed.h"
#include "common/status.h"

namespace fedlora::client {

// ---- Deterministic randomness -------------------------------------------------------------

// Sub-seeds come from MixSeed and StableHash (common/seed.h).
// Uniform in [0, n) by rejection sampling; requires n > 0.
std::uint64_t UniformBelow(std::mt19937_64& rng, std::uint64_t n);
// Fisher–Yates shuffle driven only by `rng`; the same seed gives the same order everywhere.
void DeterministicShuffle(std::span<std::size_t> values, std::mt19937_64& rng);

// ---- Corpus and paragraphs ----------------------------------------------------------------

// Offset of the first byte of `s` that is not part of a valid UTF-8 sequence (RFC 3629: no
// overlong forms, surrogates or code points above U+10FFFF), or std::string_view::npos.
std::size_t FirstInvalidUtf8(std::string_view s);

// Reads `path` whole and checks that it is UTF-8. "\r\n" line ends become "\n".
// kNotFound: it cannot be opened. kInvalidArgument: invalid UTF-8 (names the byte offset).
Result<std::string> ReadTextFile(const std::string& path);

// Paragraphs are maximal runs of non-blank lines (a blank line is empty or only spaces, tabs
// and carriage returns), joined with "\n", without a trailing newline. In tinyshakespeare each
// paragraph is one speaker turn: "NAME:\nline\nline".
std::vector<std::string> SplitParagraphs(std::string_view text);

// The speaking character of a turn: its first line with one trailing ':' removed.
std::string_view SpeakerOf(std::string_view paragraph);

// ---- Partitions ---------------------------------------------------------------------------

enum class Partitioner {
  kNone,        // No partitioning: every partition index receives the whole corpus.
  kIid,         // Paragraphs shuffled with the seed, then dealt round-robin (sizes differ by <= 1).
  kContiguous,  // Consecutive runs of paragraphs with about equal character counts.
  kSpeaker,     // Whole speakers (SpeakerOf), largest first, each to the least-loaded partition.
  kSample,      // Each partition draws sample_size distinct paragraphs at random (its own seed):
                // never empty, but partitions overlap once num_partitions x sample_size exceeds
                // the corpus. For cross-device populations larger than the corpus's paragraphs.
};
// "none", "iid", "contiguous", "speaker", "sample"; kInvalidArgument listing these otherwise.
Result<Partitioner> ParsePartitioner(std::string_view name);
std::string_view PartitionerName(Partitioner partitioner);

struct PartitionSpec {
  Partitioner partitioner = Partitioner::kNone;
  std::uint32_t num_partitions = 1;
  std::uint64_t seed = 0;  // Used by kIid and kSample; kContiguous and kSpeaker are not seeded.
  std::uint32_t sample_size = 0;  // kSample: paragraphs per partition (>= 1).
};

// kSample's share of partition `index`: min(sample_size, n) distinct paragraph indices below
// `n`, ascending, drawn with MixSeed(seed, index). O(sample_size log sample_size) for a small
// share of a large corpus; the same on every machine.
std::vector<std::size_t> SampleShare(std::size_t n, std::uint32_t sample_size, std::uint64_t seed,
                                     std::uint32_t index);

// Paragraph indices of each of the `num_partitions` partitions, each list ascending (corpus
// order). Except for kNone and kSample, partitions are disjoint and together cover every
// paragraph. kSpeaker
// never splits one speaker across partitions; ties in load go to the lowest partition index and
// speakers of equal size are taken in name order, so the result is fully deterministic.
// Partitions may be empty (more partitions than speakers or paragraphs).
// kInvalidArgument: num_partitions == 0, or kSample with sample_size == 0.
Result<std::vector<std::vector<std::size_t>>> PartitionParagraphs(
    std::span<const std::string> paragraphs, const PartitionSpec& spec);

struct HeldoutSplit {
  std::vector<std::size_t> train;    // Ascending.
  std::vector<std::size_t> heldout;  // Ascending.
};

// Holds out round(fraction * n) of `paragraphs`, chosen by a seeded shuffle. When fraction > 0
// and n >= 2, each side keeps at least one paragraph; a lone paragraph always goes to training.
// Requires 0 <= fraction < 1.
HeldoutSplit SplitHeldout(std::span<const std::size_t> paragraphs, double fraction,
                          std::uint64_t seed);

// The paragraphs at `indices`, in that order, joined with "\n\n".
std::string JoinParagraphs(std::span<const std::string> paragraphs,
                           std::span<const std::size_t> indices);

// ---- Token windows ------------------------------------------------------------------------

// Tokens [begin, begin + length) of a stream. The model input for a window is
// [BOS, s[begin], ..., s[begin+length-2]] and the targets are s[begin], ..., s[begin+length-1]:
// the checkpoints were trained on BOS-prefixed stories, so every window starts like one.
struct TokenWindow {
  std::size_t begin = 0;
  std::size_t length = 0;
  friend bool operator==(const TokenWindow&, const TokenWindow&) = default;
};

// Non-overlapping windows of exactly `seq_len` tokens from the start; a tail shorter than
// `seq_len` is dropped, except that a non-empty stream shorter than `seq_len` gives one window
// of its whole length. Requires seq_len > 0.
std::vector<TokenWindow> MakeWindows(std::size_t stream_size, std::size_t seq_len);

// ---- One client's data --------------------------------------------------------------------

struct ClientData {
  std::vector<TokenId> train;    // Train paragraphs joined with "\n\n", encoded without BOS/EOS.
  std::vector<TokenId> heldout;  // Same for the held-out paragraphs (may be empty).
  std::size_t train_paragraphs = 0;
  std::size_t heldout_paragraphs = 0;
};

class CorpusCache;  // corpus_cache.h

// The whole pipeline for one client: reads `config.path`, partitions the paragraphs with
// {partition, num_partitions, partition_seed, sample_paragraphs}, keeps partition
// `partition_index`, holds out `heldout_fraction` of it (seeded by MixSeed(partition_seed,
// partition_index)), and encodes both splits. With `corpus`, the file is read and partitioned
// once for every client that shares the cache; without, by this call. kInvalidArgument: a bad
// config value (names the key) or unreadable text. kFailedPrecondition: the client's partition
// is empty. Errors name `config.path`.
Result<ClientData> LoadClientData(const DataConfig& config, const TextTokenizer& tokenizer,
                                  CorpusCache* corpus = nullptr);

}  // namespace fedlora::client
