#include "client/data/record_partition.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

#include "client/data/text_dataset.h"

namespace fedlora::client {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

void SortEach(Partitions* partitions) {
  for (auto& part : *partitions) std::sort(part.begin(), part.end());
}

// Gives each empty partition (in index order) the last-dealt record of the currently largest
// one (lowest index on ties). `parts` are in dealing order, not yet sorted.
void FillEmptyPartitions(Partitions* parts) {
  for (std::size_t j = 0; j < parts->size(); ++j) {
    if (!(*parts)[j].empty()) continue;
    auto largest = std::max_element(parts->begin(), parts->end(), [](const auto& a, const auto& b) {
      return a.size() < b.size();
    });
    if (largest->size() <= 1) return;  // Fewer records than partitions: nothing to spare.
    (*parts)[j].push_back(largest->back());
    largest->pop_back();
  }
}

}  // namespace

double UniformOpen01(std::mt19937_64& rng) {
  // (k + 0.5) / 2^53 for k in [0, 2^53): never 0, never 1.
  return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53;
}

double StandardNormal(std::mt19937_64& rng) {
  const double u1 = UniformOpen01(rng);
  const double u2 = UniformOpen01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

double LogGammaSample(std::mt19937_64& rng, double shape) {
  FEDLORA_CHECK_MSG(shape > 0 && std::isfinite(shape), "gamma shape ", shape);
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a)  =>  log = log Gamma(a + 1) + log(U) / a.
    const double boosted = LogGammaSample(rng, shape + 1.0);
    return boosted + std::log(UniformOpen01(rng)) / shape;
  }
  // Marsaglia & Tsang, "A simple method for generating gamma variables" (2000).
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = StandardNormal(rng);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = UniformOpen01(rng);
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2) return std::log(d * v);
    if (std::log(u) < 0.5 * x2 + d * (1.0 - v + std::log(v))) return std::log(d * v);
  }
}

std::vector<double> SampleSymmetricDirichlet(std::mt19937_64& rng, double alpha, std::size_t k) {
  FEDLORA_CHECK(k >= 1);
  std::vector<double> p(k);
  for (double& x : p) x = LogGammaSample(rng, alpha);
  const double top = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& x : p) sum += (x = std::exp(x - top));  // The largest becomes 1: no underflow.
  for (double& x : p) x /= sum;
  return p;
}

Result<RecordPartitioner> ParseRecordPartitioner(std::string_view name) {
  if (name == "none") return RecordPartitioner::kNone;
  if (name == "iid") return RecordPartitioner::kIid;
  if (name == "dirichlet") return RecordPartitioner::kDirichlet;
  if (name == "group") return RecordPartitioner::kGroup;
  if (name == "quantity") return RecordPartitioner::kQuantity;
  return InvalidArgument("unknown record partitioner '", name,
                         "' (expected one of: none, iid, dirichlet, group, quantity)");
}

std::string_view RecordPartitionerName(RecordPartitioner partitioner) {
  switch (partitioner) {
    case RecordPartitioner::kNone:
      return "none";
    case RecordPartitioner::kIid:
      return "iid";
    case RecordPartitioner::kDirichlet:
      return "dirichlet";
    case RecordPartitioner::kGroup:
      return "group";
    case RecordPartitioner::kQuantity:
      return "quantity";
  }
  return "invalid";
}

Result<std::vector<std::size_t>> ClassKeys(std::span<const Record> records,
                                           std::size_t* num_classes) {
  std::vector<std::size_t> keys(records.size());
  const bool labeled =
      std::all_of(records.begin(), records.end(), [](const Record& r) { return r.label >= 0; });
  if (labeled) {
    std::size_t classes = 0;
    for (std::size_t i = 0; i < records.size(); ++i) {
      keys[i] = static_cast<std::size_t>(records[i].label);
      classes = std::max(classes, keys[i] + 1);
    }
    *num_classes = classes;
    return keys;
  }
  const bool grouped =
      std::all_of(records.begin(), records.end(), [](const Record& r) { return !r.group.empty(); });
  if (!grouped) {
    return InvalidArgument(
        "label skew needs a label or a group on every record (hint: use "
        "partition iid or quantity for unlabeled data)");
  }
  std::map<std::string_view, std::size_t> group_ids;
  for (const Record& r : records) group_ids.emplace(r.group, 0);
  std::size_t next = 0;
  for (auto& [name, id] : group_ids) id = next++;
  for (std::size_t i = 0; i < records.size(); ++i) keys[i] = group_ids.at(records[i].group);
  *num_classes = group_ids.size();
  return keys;
}

Partitions DirichletPartition(std::span<const std::size_t> class_of, std::size_t num_classes,
                              std::uint32_t num_partitions, double alpha, std::uint64_t seed) {
  FEDLORA_CHECK(num_partitions > 0 && alpha > 0);
  std::vector<std::vector<std::size_t>> by_class(num_classes);
  for (std::size_t i = 0; i < class_of.size(); ++i) {
    FEDLORA_CHECK(class_of[i] < num_classes);
    by_class[class_of[i]].push_back(i);
  }
  Partitions parts(num_partitions);
  std::mt19937_64 rng(seed);
  for (std::vector<std::size_t>& members : by_class) {
    DeterministicShuffle(members, rng);
    const std::vector<double> p = SampleSymmetricDirichlet(rng, alpha, num_partitions);
    const double n = static_cast<double>(members.size());
    double cumulative = 0;
    std::size_t begin = 0;
    for (std::size_t j = 0; j < num_partitions; ++j) {
      cumulative += p[j];
      std::size_t end = j + 1 == num_partitions
                            ? members.size()
                            : std::min(members.size(), static_cast<std::size_t>(n * cumulative));
      end = std::max(end, begin);
      parts[j].insert(parts[j].end(), members.begin() + static_cast<std::ptrdiff_t>(begin),
                      members.begin() + static_cast<std::ptrdiff_t>(end));
      begin = end;
    }
  }
  FillEmptyPartitions(&parts);
  SortEach(&parts);
  return parts;
}

Result<Partitions> PartitionRecords(std::span<const Record> records,
                                    const RecordPartitionSpec& spec) {
  if (spec.num_partitions == 0) return InvalidArgument("num_partitions must be >= 1");
  const bool needs_alpha = spec.partitioner == RecordPartitioner::kDirichlet ||
                           spec.partitioner == RecordPartitioner::kQuantity;
  if (needs_alpha && !(spec.alpha > 0 && std::isfinite(spec.alpha))) {
    return InvalidArgument("dirichlet_alpha ", spec.alpha, " must be a finite number > 0");
  }
  const std::size_t n = records.size();
  const std::size_t num_parts = spec.num_partitions;
  Partitions out(num_parts);
  std::vector<std::size_t> all(n);
  std::iota(all.begin(), all.end(), std::size_t{0});

  switch (spec.partitioner) {
    case RecordPartitioner::kNone:
      for (auto& part : out) part = all;
      return out;

    case RecordPartitioner::kIid: {
      std::mt19937_64 rng(spec.seed);
      DeterministicShuffle(all, rng);
      for (std::size_t k = 0; k < n; ++k) out[k % num_parts].push_back(all[k]);
      break;
    }

    case RecordPartitioner::kDirichlet: {
      std::size_t num_classes = 0;
      FEDLORA_ASSIGN_OR_RETURN(const std::vector<std::size_t> keys,
                               ClassKeys(records, &num_classes));
      return DirichletPartition(keys, num_classes, spec.num_partitions, spec.alpha, spec.seed);
    }

    case RecordPartitioner::kGroup: {
      std::map<std::string_view, std::size_t> size_of_group;  // Name order.
      for (const Record& r : records) {
        if (r.group.empty()) {
          return InvalidArgument("record at line ", r.line,
                                 " has no group (hint: partition group needs a 'group' or "
                                 "'category' field on every record)");
        }
        ++size_of_group[r.group];
      }
      std::vector<std::pair<std::string_view, std::size_t>> groups(size_of_group.begin(),
                                                                   size_of_group.end());
      std::stable_sort(groups.begin(), groups.end(),
                       [](const auto& a, const auto& b) { return a.second > b.second; });
      std::vector<std::size_t> load(num_parts, 0);
      std::map<std::string_view, std::size_t> part_of_group;
      for (const auto& [name, size] : groups) {
        const std::size_t part =
            static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
        load[part] += size;
        part_of_group[name] = part;
      }
      for (std::size_t i = 0; i < n; ++i) out[part_of_group.at(records[i].group)].push_back(i);
      break;
    }

    case RecordPartitioner::kQuantity: {
      if (n < num_parts) {
        return InvalidArgument("partition quantity needs at least one record per partition: ", n,
                               " records for ", num_parts, " partitions");
      }
      std::mt19937_64 rng(spec.seed);
      DeterministicShuffle(all, rng);
      const std::vector<double> q = SampleSymmetricDirichlet(rng, spec.alpha, num_parts);
      // One record each, the other n - N by largest remainder of q * (n - N).
      const std::size_t spare = n - num_parts;
      std::vector<std::size_t> size(num_parts, 1);
      std::vector<std::pair<double, std::size_t>> remainders(num_parts);
      std::size_t given = 0;
      for (std::size_t j = 0; j < num_parts; ++j) {
        const double exact = q[j] * static_cast<double>(spare);
        const std::size_t whole = std::min(spare - given, static_cast<std::size_t>(exact));
        size[j] += whole;
        given += whole;
        remainders[j] = {exact - static_cast<double>(whole), j};
      }
      std::stable_sort(remainders.begin(), remainders.end(),
                       [](const auto& a, const auto& b) { return a.first > b.first; });
      for (std::size_t k = 0; given < spare; k = (k + 1) % num_parts, ++given) {
        ++size[remainders[k].second];
      }
      std::size_t begin = 0;
      for (std::size_t j = 0; j < num_parts; ++j) {
        out[j].assign(all.begin() + static_cast<std::ptrdiff_t>(begin),
                      all.begin() + static_cast<std::ptrdiff_t>(begin + size[j]));
        begin += size[j];
      }
      break;
    }
  }
  SortEach(&out);
  return out;
}

std::vector<std::vector<std::size_t>> ClassHistograms(const Partitions& partitions,
                                                      std::span<const std::size_t> class_of,
                                                      std::size_t num_classes) {
  std::vector<std::vector<std::size_t>> histograms(partitions.size(),
                                                   std::vector<std::size_t>(num_classes, 0));
  for (std::size_t j = 0; j < partitions.size(); ++j) {
    for (std::size_t i : partitions[j]) ++histograms[j][class_of[i]];
  }
  return histograms;
}

double MeanLabelTotalVariation(const Partitions& partitions, std::span<const std::size_t> class_of,
                               std::size_t num_classes) {
  std::vector<double> global(num_classes, 0);
  for (std::size_t c : class_of) global[c] += 1;
  const double total = static_cast<double>(class_of.size());
  if (total == 0) return 0;
  for (double& g : global) g /= total;
  double sum = 0;
  std::size_t counted = 0;
  for (const std::vector<std::size_t>& h : ClassHistograms(partitions, class_of, num_classes)) {
    const double size = static_cast<double>(std::accumulate(h.begin(), h.end(), std::size_t{0}));
    if (size == 0) continue;
    double tv = 0;
    for (std::size_t c = 0; c < num_classes; ++c) tv += std::abs(h[c] / size - global[c]);
    sum += 0.5 * tv;
    ++counted;
  }
  return counted == 0 ? 0 : sum / static_cast<double>(counted);
}

}  // namespace fedlora::client
