#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>

#include "client/data/record_partition.h"
#include "tests/client_data/partition_expect.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;

using testing_assets::DatasetPath;

// The first 6,000 SST-2 training rows (3,365 positive), loaded once.
const std::vector<Record>& Sst2() {
  static const std::vector<Record> records = [] {
    Result<std::vector<Record>> r = LoadSst2Tsv(DatasetPath("sst2/train.tsv"), {.limit = 6000});
    FEDLORA_CHECK(r.ok());
    return std::move(r).value();
  }();
  return records;
}

const std::vector<Record>& SpamAssassin() {
  static const std::vector<Record> records = [] {
    Result<std::vector<Record>> r = LoadSpamAssassinJsonl(
        DatasetPath("spamassassin/spamassassin.jsonl.gz"), {.limit = 0, .max_text_chars = 64});
    FEDLORA_CHECK(r.ok());
    return std::move(r).value();
  }();
  return records;
}

// `n` unlabeled records whose labels are i % classes (or groups "g<i % classes>").
std::vector<Record> Synthetic(std::size_t n, std::size_t classes, bool as_groups) {
  std::vector<Record> records(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (as_groups) {
      records[i].group = StrCat("g", i % classes);
    } else {
      records[i].label = static_cast<std::int32_t>(i % classes);
    }
    records[i].line = i + 1;
  }
  return records;
}

Partitions PartitionOrDie(std::span<const Record> records, RecordPartitioner p, std::uint32_t n,
                          std::uint64_t seed, double alpha = 0.5) {
  Result<Partitions> parts = PartitionRecords(records, {p, n, seed, alpha});
  EXPECT_TRUE(parts.ok()) << parts.status().ToString();
  return parts.ok() ? std::move(parts).value() : Partitions(n);
}

using testing_assets::ExpectDisjointCover;

std::vector<std::size_t> Labels(std::span<const Record> records) {
  std::size_t classes = 0;
  return ClassKeys(records, &classes).value();
}

// ---- Draws ----------------------------------------------------------------------------------

TEST(GammaSamplerTest, MeansAndVariancesMatchTheShapeForSmallAndLargeShapes) {
  for (double shape : {0.1, 0.5, 1.0, 3.0, 20.0}) {
    std::mt19937_64 rng(7);
    constexpr int kDraws = 40000;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < kDraws; ++i) {
      const double x = std::exp(LogGammaSample(rng, shape));
      sum += x;
      sum2 += x * x;
    }
    const double mean = sum / kDraws;
    const double var = sum2 / kDraws - mean * mean;
    // Gamma(k, 1): mean k, variance k. Seeded, so these bounds are fixed, not flaky.
    EXPECT_NEAR(mean, shape, 0.03 * shape + 0.005) << "shape " << shape;
    EXPECT_NEAR(var, shape, 0.1 * shape + 0.005) << "shape " << shape;
  }
}

TEST(GammaSamplerTest, DirichletDrawsSumToOneEvenForTinyAlpha) {
  std::mt19937_64 rng(1);
  for (double alpha : {0.001, 0.1, 1.0, 100.0}) {
    const std::vector<double> p = SampleSymmetricDirichlet(rng, alpha, 8);
    EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-12);
    for (double x : p) EXPECT_TRUE(x >= 0 && std::isfinite(x));
  }
  std::mt19937_64 a(5), b(5);
  EXPECT_EQ(SampleSymmetricDirichlet(a, 0.3, 4), SampleSymmetricDirichlet(b, 0.3, 4));
}

// ---- Dirichlet label skew -------------------------------------------------------------------

TEST(DirichletPartitionTest, IsReproducibleForASeedAndDisjointAndCovering) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  const Partitions a = PartitionOrDie(Sst2(), RecordPartitioner::kDirichlet, 8, 42);
  EXPECT_EQ(a, PartitionOrDie(Sst2(), RecordPartitioner::kDirichlet, 8, 42));
  EXPECT_NE(a, PartitionOrDie(Sst2(), RecordPartitioner::kDirichlet, 8, 43));
  ExpectDisjointCover(a, Sst2().size());
}

TEST(DirichletPartitionTest, SmallAlphaSkewsLabelsMoreThanLargeAlpha) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  const std::vector<std::size_t> labels = Labels(Sst2());
  double skew_small = 0, skew_large = 0;
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    skew_small += MeanLabelTotalVariation(
        PartitionOrDie(Sst2(), RecordPartitioner::kDirichlet, 8, seed, 0.1), labels, 2);
    skew_large += MeanLabelTotalVariation(
        PartitionOrDie(Sst2(), RecordPartitioner::kDirichlet, 8, seed, 100.0), labels, 2);
  }
  skew_small /= 5;
  skew_large /= 5;
  EXPECT_GT(skew_small, 0.25);
  EXPECT_LT(skew_large, 0.05);
  EXPECT_GT(skew_small, 5 * skew_large);
  const double iid =
      MeanLabelTotalVariation(PartitionOrDie(Sst2(), RecordPartitioner::kIid, 8, 0), labels, 2);
  EXPECT_LT(iid, 0.03);
}

TEST(DirichletPartitionTest, EveryPartitionGetsARecordEvenForTinyAlpha) {
  const std::vector<Record> records = Synthetic(500, 3, false);
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const Partitions parts = PartitionOrDie(records, RecordPartitioner::kDirichlet, 10, seed, 0.01);
    ExpectDisjointCover(parts, records.size());
    for (const auto& part : parts) EXPECT_FALSE(part.empty()) << "seed " << seed;
  }
}

TEST(DirichletPartitionTest, UnlabeledRecordsAreSkewedOverTheirGroups) {
  const std::vector<Record> records = Synthetic(900, 3, true);
  std::size_t classes = 0;
  const std::vector<std::size_t> keys = ClassKeys(records, &classes).value();
  EXPECT_EQ(classes, 3u);
  EXPECT_EQ(keys[0], 0u);  // "g0" < "g1" < "g2".
  EXPECT_EQ(keys[2], 2u);
  const Partitions parts = PartitionOrDie(records, RecordPartitioner::kDirichlet, 4, 9, 0.05);
  ExpectDisjointCover(parts, records.size());
  EXPECT_GT(MeanLabelTotalVariation(parts, keys, classes), 0.3);
}

TEST(DirichletPartitionTest, RecordsWithNeitherLabelsNorGroupsAreRefusedWithAHint) {
  std::vector<Record> records(10);
  const Status s = PartitionRecords(records, {RecordPartitioner::kDirichlet, 2, 0, 0.5}).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("iid or quantity"));
  EXPECT_THAT(PartitionRecords(Synthetic(10, 2, false), {RecordPartitioner::kDirichlet, 2, 0, 0.0})
                  .status()
                  .message(),
              HasSubstr("alpha"));
}

// ---- Quantity skew --------------------------------------------------------------------------

TEST(QuantityPartitionTest, GivesEveryClientAtLeastOneRecordAndSkewsSizesForSmallAlpha) {
  const std::vector<Record> records = Synthetic(1000, 2, false);
  for (std::uint64_t seed = 0; seed < 10; ++seed) {
    const Partitions parts = PartitionOrDie(records, RecordPartitioner::kQuantity, 16, seed, 0.1);
    ExpectDisjointCover(parts, records.size());
    for (const auto& part : parts) EXPECT_GE(part.size(), 1u);
  }
  const auto spread = [&](double alpha) {
    const Partitions parts = PartitionOrDie(records, RecordPartitioner::kQuantity, 8, 3, alpha);
    std::size_t lo = records.size(), hi = 0;
    for (const auto& part : parts) lo = std::min(lo, part.size()), hi = std::max(hi, part.size());
    return hi - lo;
  };
  EXPECT_GT(spread(0.1), 200u);
  EXPECT_LT(spread(1000.0), 30u);
  EXPECT_EQ(PartitionRecords(Synthetic(3, 2, false), {RecordPartitioner::kQuantity, 4, 0, 1.0})
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

// ---- Natural groups, IID, none --------------------------------------------------------------

TEST(GroupPartitionTest, NeverSplitsAGroupAndBalancesLargestFirst) {
  FEDLORA_REQUIRE_DATASET("spamassassin/spamassassin.jsonl.gz");
  const std::vector<Record>& records = SpamAssassin();
  const Partitions parts = PartitionOrDie(records, RecordPartitioner::kGroup, 3, 0);
  ExpectDisjointCover(parts, records.size());
  std::map<std::string, std::set<std::size_t>> parts_of_group;
  for (std::size_t j = 0; j < parts.size(); ++j) {
    for (std::size_t i : parts[j]) parts_of_group[records[i].group].insert(j);
  }
  for (const auto& [group, where] : parts_of_group) EXPECT_EQ(where.size(), 1u) << group;
  // easy-ham-1 2500 -> p0, easy-ham-2 1400 -> p1, spam-2 1396 -> p2, spam-1 500 -> p2 (least
  // loaded), hard-ham-1 250 -> p1.
  EXPECT_EQ(parts[0].size(), 2500u);
  EXPECT_EQ(parts[1].size(), 1650u);
  EXPECT_EQ(parts[2].size(), 1896u);
  // More partitions than groups leaves the extra partitions empty rather than splitting.
  const Partitions eight = PartitionOrDie(records, RecordPartitioner::kGroup, 8, 0);
  EXPECT_EQ(std::count_if(eight.begin(), eight.end(), [](const auto& p) { return p.empty(); }), 3);
}

TEST(GroupPartitionTest, ARecordWithoutAGroupIsNamedByItsLine) {
  std::vector<Record> records = Synthetic(5, 2, true);
  records[3].group.clear();
  EXPECT_THAT(PartitionRecords(records, {RecordPartitioner::kGroup, 2, 0, 0.5}).status().message(),
              HasSubstr("record at line 4 has no group"));
}

TEST(IidPartitionTest, DealsSizesThatDifferByAtMostOneAndNoneGivesEverything) {
  const std::vector<Record> records = Synthetic(103, 2, false);
  const Partitions parts = PartitionOrDie(records, RecordPartitioner::kIid, 10, 5);
  ExpectDisjointCover(parts, records.size());
  for (const auto& part : parts) EXPECT_TRUE(part.size() == 10 || part.size() == 11);
  const Partitions all = PartitionOrDie(records, RecordPartitioner::kNone, 3, 0);
  for (const auto& part : all) EXPECT_EQ(part.size(), records.size());
  EXPECT_EQ(PartitionRecords(records, {RecordPartitioner::kIid, 0, 0, 0.5}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(RecordPartitionerTest, NamesRoundTripAndUnknownNamesListTheChoices) {
  for (RecordPartitioner p :
       {RecordPartitioner::kNone, RecordPartitioner::kIid, RecordPartitioner::kDirichlet,
        RecordPartitioner::kGroup, RecordPartitioner::kQuantity}) {
    EXPECT_EQ(ParseRecordPartitioner(RecordPartitionerName(p)).value(), p);
  }
  EXPECT_THAT(ParseRecordPartitioner("speaker").status().message(),
              HasSubstr("none, iid, dirichlet, group, quantity"));
}

TEST(LabelSkewMetricTest, IsZeroForPartitionsWithTheGlobalMixAndGrowsWhenEachHoldsOneClass) {
  const std::vector<std::size_t> labels = {0, 1, 0, 1};
  EXPECT_DOUBLE_EQ(MeanLabelTotalVariation({{0, 1}, {2, 3}}, labels, 2), 0.0);
  EXPECT_DOUBLE_EQ(MeanLabelTotalVariation({{0, 2}, {1, 3}}, labels, 2), 0.5);
  EXPECT_DOUBLE_EQ(MeanLabelTotalVariation({{}, {}}, labels, 2), 0.0);
}

}  // namespace
}  // namespace fedlora::client
