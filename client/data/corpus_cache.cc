#include "client/data/corpus_cache.h"

#include <limits>

#include "common/status.h"

namespace fedlora::client {

Result<std::shared_ptr<const PartitionedText>> PartitionedText::Load(const DataConfig& config) {
  Result<Partitioner> partitioner = ParsePartitioner(config.partition);
  if (!partitioner.ok()) return partitioner.status().WithContext("data.partition");
  if (config.num_partitions == 0) return InvalidArgument("data.num_partitions must be >= 1");
  std::shared_ptr<PartitionedText> out(new PartitionedText());
  out->spec_ = {*partitioner, config.num_partitions, config.partition_seed,
                config.sample_paragraphs};
  if (out->spec_.partitioner == Partitioner::kSample && out->spec_.sample_size == 0) {
    return InvalidArgument("data.sample_paragraphs must be >= 1 with data.partition: sample");
  }
  {
    FEDLORA_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(config.path));
    out->paragraphs_ = SplitParagraphs(text);
  }
  if (out->paragraphs_.size() >= std::numeric_limits<std::uint32_t>::max()) {
    return InvalidArgument("text file '", config.path, "' has more than 2^32 paragraphs");
  }
  if (out->spec_.partitioner != Partitioner::kNone &&
      out->spec_.partitioner != Partitioner::kSample) {
    FEDLORA_ASSIGN_OR_RETURN(const auto shares, PartitionParagraphs(out->paragraphs_, out->spec_));
    out->offsets_.reserve(shares.size() + 1);
    out->offsets_.push_back(0);
    for (const std::vector<std::size_t>& share : shares) {
      for (std::size_t p : share) out->members_.push_back(static_cast<std::uint32_t>(p));
      out->offsets_.push_back(static_cast<std::uint32_t>(out->members_.size()));
    }
  }
  return std::shared_ptr<const PartitionedText>(std::move(out));
}

std::vector<std::size_t> PartitionedText::Share(std::uint32_t index) const {
  FEDLORA_CHECK_MSG(index < spec_.num_partitions, "partition ", index, " of ",
                    spec_.num_partitions);
  std::vector<std::size_t> share;
  switch (spec_.partitioner) {
    case Partitioner::kNone:
      share.resize(paragraphs_.size());
      for (std::size_t i = 0; i < share.size(); ++i) share[i] = i;
      return share;
    case Partitioner::kSample:
      return SampleShare(paragraphs_.size(), spec_.sample_size, spec_.seed, index);
    default:
      share.assign(members_.begin() + offsets_[index], members_.begin() + offsets_[index + 1]);
      return share;
  }
}

std::uint64_t PartitionedText::MemoryBytes() const {
  std::uint64_t bytes = (offsets_.capacity() + members_.capacity()) * sizeof(std::uint32_t);
  for (const std::string& p : paragraphs_) bytes += sizeof(std::string) + p.capacity();
  return bytes;
}

Result<std::shared_ptr<const PartitionedText>> CorpusCache::Text(const DataConfig& config) {
  const std::string key = StrCat(config.path, '\n', config.partition, '\n', config.num_partitions,
                                 '\n', config.partition_seed, '\n', config.sample_paragraphs);
  std::lock_guard<std::mutex> lock(mu_);  // Held while loading: the others want it too.
  if (const auto it = texts_.find(key); it != texts_.end()) return it->second;
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const PartitionedText> text,
                           PartitionedText::Load(config));
  ++reads_;
  texts_.emplace(key, text);
  return text;
}

Result<std::shared_ptr<const PartitionedRecords>> CorpusCache::Records(const DataConfig& config) {
  const std::string key =
      StrCat(config.format, '\n', config.path, '\n', config.max_text_chars, '\n',
             config.max_records, '\n', config.partition, '\n', config.num_partitions, '\n',
             config.partition_seed, '\n', config.dirichlet_alpha, '\n', config.eval_path);
  std::lock_guard<std::mutex> lock(mu_);
  if (const auto it = records_.find(key); it != records_.end()) return it->second;
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const PartitionedRecords> records,
                           LoadPartitionedRecords(config));
  ++reads_;
  records_.emplace(key, records);
  return records;
}

Result<std::shared_ptr<const std::vector<std::string>>> CorpusCache::Paragraphs(
    const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (const auto it = paragraphs_.find(path); it != paragraphs_.end()) return it->second;
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  auto paragraphs = std::make_shared<const std::vector<std::string>>(SplitParagraphs(text));
  ++reads_;
  paragraphs_.emplace(path, paragraphs);
  return std::shared_ptr<const std::vector<std::string>>(std::move(paragraphs));
}

std::uint64_t CorpusCache::reads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reads_;
}

}  // namespace fedlora::client
