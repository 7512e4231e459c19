// The correction log: what each client is sent, checkpoint round trips, and compaction.
#include <gtest/gtest.h>

#include "server/strategies/corrections.h"
#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server {
namespace {

using namespace testing;

CorrectionEntry Entry(std::uint64_t version, std::int64_t k, std::mt19937_64& rng) {
  CorrectionEntry e;
  e.version = version;
  for (const auto& m : kModules) {
    ModuleCorrection c;
    c.u = FromDoubles(DType::kF32, {m.d_out, k}, ToDoubles(Random(m.d_out, k, rng)));
    c.v = FromDoubles(DType::kF32, {k, m.d_in}, ToDoubles(Random(k, m.d_in, rng)));
    e.modules.emplace(m.name, std::move(c));
  }
  return e;
}

TEST(CorrectionLogTest, ClientsGetExactlyTheEntriesTheyLack) {
  std::mt19937_64 rng(1);
  CorrectionLog log;
  log.Append(Entry(1, 1, rng));
  log.Append(Entry(2, 1, rng));
  log.Append(Entry(3, 1, rng));
  TensorMap tensors;
  const wire::BaseUpdate up = log.UpdateFor(1, &tensors);
  EXPECT_FALSE(up.rebase);
  EXPECT_EQ(up.from_version, 1u);
  EXPECT_EQ(up.to_version, 3u);
  ASSERT_EQ(up.entries.size(), 4u);  // Versions 2 and 3, two modules each.
  EXPECT_EQ(up.entries.front().version, 2u);
  for (const auto& e : up.entries) EXPECT_TRUE(tensors.contains(e.u) && tensors.contains(e.v));
  TensorMap none;
  EXPECT_TRUE(log.UpdateFor(3, &none).entries.empty());
  EXPECT_TRUE(none.empty());
}

TEST(CorrectionLogTest, NewOrUnknownClientsRebuildFromThePristineBase) {
  std::mt19937_64 rng(2);
  CorrectionLog log;
  log.Append(Entry(1, 1, rng));
  log.Append(Entry(2, 1, rng));
  for (std::uint64_t version : {0ull, 7ull}) {  // Fresh, and ahead of this log (restored older).
    TensorMap tensors;
    const wire::BaseUpdate up = log.UpdateFor(version, &tensors);
    EXPECT_TRUE(up.rebase) << version;
    EXPECT_EQ(up.entries.size(), 4u);
  }
}

TEST(CorrectionLogTest, CheckpointFormRoundTrips) {
  std::mt19937_64 rng(3);
  CorrectionLog log;
  log.Append(Entry(4, 2, rng));
  CorrectionEntry snapshot = Entry(5, 3, rng);
  log.Append(Entry(5, 1, rng));
  log.ReplaceWithSnapshot(snapshot);
  log.Append(Entry(6, 1, rng));
  const Result<CorrectionLog> back = CorrectionLog::FromTensors(log.ToTensors());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, log);
  TensorMap garbage = {{"base.x.y.U", Zeros(DType::kF32, {1, 1})}};
  EXPECT_EQ(CorrectionLog::FromTensors(garbage).status().code(), StatusCode::kDataLoss);
}

TEST(CorrectionLogTest, CompactionKeepsTheSumAndSendsEveryOlderClientTheSnapshot) {
  std::mt19937_64 rng(4);
  CorrectionLog log;
  // Rank 4 per entry on 9x6 and 11x6 modules: replay soon costs more than a snapshot.
  for (std::uint64_t v = 1; v <= 3; ++v) {
    const CorrectionLog before = log;
    ASSERT_TRUE(AppendCorrection(log, Entry(v, 4, rng), CorrectionConfig{}, DType::kF32).ok());
    (void)before;
  }
  ASSERT_TRUE(log.snapshot().has_value());
  // The snapshot's sum equals the sum of the entries it replaced (fp32 round-off only).
  std::mt19937_64 replay(4);
  CorrectionLog reference;
  for (std::uint64_t v = 1; v <= 3; ++v) reference.Append(Entry(v, 4, replay));
  for (const auto& m : kModules) {
    const Dense a = CorrectionSum(log, m), b = CorrectionSum(reference, m);
    EXPECT_LT(MaxAbsDiff(a, b), 1e-4) << m.name;
  }
  TensorMap tensors;
  const wire::BaseUpdate up = log.UpdateFor(1, &tensors);  // Older than the snapshot.
  EXPECT_TRUE(up.rebase);
  EXPECT_EQ(up.to_version, log.latest_version());
}

}  // namespace
}  // namespace fedlora::server
