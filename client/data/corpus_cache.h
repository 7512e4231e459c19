// corpus_cache.h — a corpus (text, or records of a record format) read and partitioned once, and
// shared by every client of one process (the simulator's virtual clients), so that building N
// clients costs O(corpus + N) instead of N reads of the corpus. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "client/config.h"
#include "client/data/examples.h"
#include "client/data/text_dataset.h"
#include "common/status.h"

namespace fedlora::client {

// One corpus and one partitioning of it (every key of data.* but partition_index). Immutable:
// safe to share between threads.
class PartitionedText {
 public:
  // Reads `config.path` (ReadTextFile), splits it into paragraphs and partitions them with
  // {partition, num_partitions, partition_seed, sample_paragraphs}. Errors name the file or key.
  static Result<std::shared_ptr<const PartitionedText>> Load(const DataConfig& config);

  std::span<const std::string> paragraphs() const { return paragraphs_; }
  std::uint32_t num_partitions() const { return spec_.num_partitions; }
  // Paragraph indices of partition `index` (< num_partitions()), ascending; may be empty.
  std::vector<std::size_t> Share(std::uint32_t index) const;
  // Bytes of text and share tables held.
  std::uint64_t MemoryBytes() const;

 private:
  PartitionedText() = default;

  std::vector<std::string> paragraphs_;
  PartitionSpec spec_;
  // Shares of the table-driven partitioners, compressed rows: partition i holds
  // members_[offsets_[i] .. offsets_[i + 1]). Empty for kNone (everything) and kSample (drawn
  // on demand from its seed).
  std::vector<std::uint32_t> offsets_;
  std::vector<std::uint32_t> members_;
};

// Partitioned corpora by file and partitioning, loaded on first use. Thread-safe.
class CorpusCache {
 public:
  // The corpus `config` names, partitioned as it says: loaded by the first call with these keys.
  Result<std::shared_ptr<const PartitionedText>> Text(const DataConfig& config);
  // The records `config` names (a record format), sampled and partitioned as it says, with its
  // eval_path's records: loaded by the first call with these keys.
  Result<std::shared_ptr<const PartitionedRecords>> Records(const DataConfig& config);
  // Every paragraph of `path` (e.g. data.init_path), read by the first call.
  Result<std::shared_ptr<const std::vector<std::string>>> Paragraphs(const std::string& path);
  // Files read so far (once per path and partitioning).
  std::uint64_t reads() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const PartitionedText>> texts_;
  std::map<std::string, std::shared_ptr<const PartitionedRecords>> records_;
  std::map<std::string, std::shared_ptr<const std::vector<std::string>>> paragraphs_;
  std::uint64_t reads_ = 0;
};

}  // namespace fedlora::client
