// record_partition.h — seeded, reproducible partitions of Records across the clients of a
// federation, IID and the usual non-IID schemes of the federated-learning literature.
// Torch-free.
//
// Every client computes the partition of the whole file from the same seed and keeps its own
// part, so no coordination is needed. Randomness is std::mt19937_64 (fully specified by the
// standard) with our own shuffle, bounded draws, normals (Box–Muller) and gammas
// (Marsaglia–Tsang): std::shuffle and the std distributions differ between standard libraries.
// The floating-point draws use std::log/exp/sqrt/cos; glibc's are correctly rounded in practice,
// and a last-ulp difference elsewhere could move a Dirichlet cut point only when a proportion
// times a class size lands within an ulp of an integer.
//
// Every function is thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "client/data/record_sources.h"
#include "common/status.h"

namespace fedlora::client {

using Partitions = std::vector<std::vector<std::size_t>>;

// ---- Deterministic draws --------------------------------------------------------------------

// Uniform in the open interval (0, 1), from the top 53 bits of one draw.
double UniformOpen01(std::mt19937_64& rng);
// Standard normal by Box–Muller (two uniform draws per value; the sine half is discarded).
double StandardNormal(std::mt19937_64& rng);
// log of a Gamma(shape, 1) draw, shape > 0: Marsaglia–Tsang (2000) for shape >= 1, and for
// shape < 1 the boost Gamma(shape) = Gamma(shape + 1) * U^(1/shape), kept in log space so that
// tiny shapes (alpha = 0.01) do not underflow to zero.
double LogGammaSample(std::mt19937_64& rng, double shape);
// A draw from Dirichlet(alpha * 1_k): normalised gammas, computed from their logs. k >= 1.
std::vector<double> SampleSymmetricDirichlet(std::mt19937_64& rng, double alpha, std::size_t k);

// ---- Partitioners ---------------------------------------------------------------------------

enum class RecordPartitioner : std::uint8_t {
  kNone,       // Every partition receives every record.
  kIid,        // Shuffled with the seed, dealt round-robin (sizes differ by <= 1).
  kDirichlet,  // Label skew: per class, proportions p ~ Dir(alpha * 1_N) over the N partitions.
  kGroup,      // Natural groups (Record::group): whole groups, largest first, least loaded.
  kQuantity,   // Quantity skew: sizes proportional to q ~ Dir(alpha * 1_N), each >= 1, IID labels.
};
// "none", "iid", "dirichlet", "group", "quantity"; kInvalidArgument listing them otherwise.
Result<RecordPartitioner> ParseRecordPartitioner(std::string_view name);
std::string_view RecordPartitionerName(RecordPartitioner partitioner);

struct RecordPartitionSpec {
  RecordPartitioner partitioner = RecordPartitioner::kIid;
  std::uint32_t num_partitions = 1;
  std::uint64_t seed = 0;  // Must be equal on every client of one federation.
  double alpha = 0.5;      // Concentration of kDirichlet and kQuantity; smaller = more skewed.
};

// The class of each record for label skew: its label when every record has one (classes
// 0..max label), else its group when every record has one (classes in group-name order), else
// kInvalidArgument with a hint. `num_classes` receives the number of classes.
Result<std::vector<std::size_t>> ClassKeys(std::span<const Record> records,
                                           std::size_t* num_classes);

// Label-skew partition over precomputed classes (Hsu et al. 2019; the "Dirichlet label skew" of
// NIID-Bench, Li et al. 2022): for each class c in order, shuffle its records, draw
// p ~ Dir(alpha * 1_N), and give partition j the records from floor(n_c * P_{j-1}) to
// floor(n_c * P_j), P being the cumulative sums of p (the last partition takes the rest).
// Small alpha can leave a partition with nothing; then each empty partition, in index order,
// takes one record (the last one dealt) from the currently largest partition, so every partition
// has a record whenever there are at least as many records as partitions.
Partitions DirichletPartition(std::span<const std::size_t> class_of, std::size_t num_classes,
                              std::uint32_t num_partitions, double alpha, std::uint64_t seed);

// Record indices of each of the spec's partitions, each list ascending (file order). Except for
// kNone, partitions are disjoint and together cover every record. kGroup never splits a group:
// groups go by decreasing size (ties in name order) to the least-loaded partition (ties to the
// lowest index). kQuantity gives every partition at least one record.
// kInvalidArgument: num_partitions == 0, alpha <= 0 (or not finite) for kDirichlet/kQuantity,
// records without labels or groups for kDirichlet, a record without a group for kGroup (names
// its line), fewer records than partitions for kQuantity.
Result<Partitions> PartitionRecords(std::span<const Record> records,
                                    const RecordPartitionSpec& spec);

// ---- Diagnostics ----------------------------------------------------------------------------

// Per partition, how many of its records are in each class.
std::vector<std::vector<std::size_t>> ClassHistograms(const Partitions& partitions,
                                                      std::span<const std::size_t> class_of,
                                                      std::size_t num_classes);
// Mean over non-empty partitions of the total-variation distance between the partition's class
// distribution and the distribution of all records: 0 = IID labels, approaching 1 = each
// partition holds classes that are rare overall. 0 when no partition has records.
double MeanLabelTotalVariation(const Partitions& partitions, std::span<const std::size_t> class_of,
                               std::size_t num_classes);

}  // namespace fedlora::client
