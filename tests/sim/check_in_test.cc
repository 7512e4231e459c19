#include "sim/check_in.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace fedlora::sim {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<FleetModel> FleetWithAvailability(double availability, std::uint32_t clients) {
  FleetConfig c;
  c.enabled = true;
  c.seed = 11;
  c.tokens_per_second = {.kind = Distribution::Kind::kConstant, .value = 1000};
  c.downlink_mbps = {.kind = Distribution::Kind::kConstant, .value = 10};
  c.uplink_mbps = {.kind = Distribution::Kind::kConstant, .value = 1};
  c.latency_ms = {.kind = Distribution::Kind::kConstant, .value = 10};
  c.availability = availability;
  Result<std::unique_ptr<FleetModel>> m = FleetModel::Make(c, clients);
  FEDLORA_CHECK_MSG(m.ok(), m.status().ToString());
  return std::move(m).value();
}

void ExpectDistinctSortedBelow(const std::vector<std::uint32_t>& clients, std::uint32_t n) {
  EXPECT_TRUE(std::is_sorted(clients.begin(), clients.end()));
  EXPECT_EQ(std::set<std::uint32_t>(clients.begin(), clients.end()).size(), clients.size());
  for (std::uint32_t c : clients) EXPECT_LT(c, n);
}

TEST(CheckInTest, AHundredOfAHundredThousandAreDistinctAndTheSameForTheSameSeedAndRound) {
  const Result<CheckIns> a = DrawCheckIns(100000, 100, 2026, 3, nullptr);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_EQ(a->clients.size(), 100u);
  ExpectDistinctSortedBelow(a->clients, 100000);
  EXPECT_EQ(a->offline, 0u);
  const Result<CheckIns> again = DrawCheckIns(100000, 100, 2026, 3, nullptr);
  const Result<CheckIns> next_round = DrawCheckIns(100000, 100, 2026, 4, nullptr);
  const Result<CheckIns> other_seed = DrawCheckIns(100000, 100, 2027, 3, nullptr);
  ASSERT_TRUE(again.ok() && next_round.ok() && other_seed.ok());
  EXPECT_EQ(again->clients, a->clients);
  EXPECT_NE(next_round->clients, a->clients);
  EXPECT_NE(other_seed->clients, a->clients);
}

TEST(CheckInTest, MostOfASmallPopulationComesFromAShuffle) {
  const Result<CheckIns> all = DrawCheckIns(10, 10, 1, 1, nullptr);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->clients, (std::vector<std::uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  const Result<CheckIns> most = DrawCheckIns(10, 7, 1, 1, nullptr);
  ASSERT_TRUE(most.ok());
  EXPECT_EQ(most->clients.size(), 7u);
  ExpectDistinctSortedBelow(most->clients, 10);
}

// Every client is drawn with the same chance: over many rounds, each of 50 clients checks in
// about rounds x 5 / 50 times.
TEST(CheckInTest, EveryClientChecksInEquallyOften) {
  std::vector<int> times(50, 0);
  const int rounds = 4000;
  for (int r = 0; r < rounds; ++r) {
    const Result<CheckIns> in = DrawCheckIns(50, 5, 9, r, nullptr);
    ASSERT_TRUE(in.ok());
    for (std::uint32_t c : in->clients) ++times[c];
  }
  const double expected = rounds * 5.0 / 50;  // 400, deviation ~19
  for (int t : times) EXPECT_NEAR(t, expected, 6 * 19.0);
}

// Only clients the fleet model has online in the round check in; those drawn offline are
// counted, and each is offline by FleetModel::Online for that very round.
TEST(CheckInTest, OfflineClientsAreSkippedAndCounted) {
  const std::unique_ptr<FleetModel> fleet = FleetWithAvailability(0.5, 2000);
  for (std::uint64_t round : {1u, 2u}) {
    const Result<CheckIns> in = DrawCheckIns(2000, 100, 5, round, fleet.get());
    ASSERT_TRUE(in.ok()) << in.status().ToString();
    ASSERT_EQ(in->clients.size(), 100u);
    ExpectDistinctSortedBelow(in->clients, 2000);
    for (std::uint32_t c : in->clients) EXPECT_TRUE(fleet->Online(c, round)) << c;
    EXPECT_GT(in->offline, 40u);  // About 100 of ~200 drawn.
    EXPECT_LT(in->offline, 200u);
  }
}

TEST(CheckInTest, TooFewOnlineIsAnErrorNamingTheRound) {
  const std::unique_ptr<FleetModel> fleet = FleetWithAvailability(0.1, 100);
  const Result<CheckIns> in = DrawCheckIns(100, 60, 5, 7, fleet.get());
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(in.status().message(), HasSubstr("online in round 7"));
}

}  // namespace
}  // namespace fedlora::sim
