// Bounded influence through the real coordinator: one hostile upload among honest ones, over
// real ZeroMQ sockets, and what the committed global adapter and metrics.jsonl show afterwards.
#include <gtest/gtest.h>

#include <cmath>

#include "server/checkpoint_store.h"
#include "server/coordinator.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"

namespace fedlora::server {
namespace {

using testing::kDigest;
using testing::kModules;
using testing::MakeHello;
using testing::TestPeer;
using wire::ErrorCode;

class CoordinatorRobustTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("robust");
    config_.transport.bind =
        "inproc://robust-" +
        std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  // Joins `names` and returns each one's task of round 1, in order.
  std::vector<wire::RoundTask> JoinAll(std::vector<std::unique_ptr<TestPeer>>& peers,
                                       const std::vector<std::string>& names) {
    for (const std::string& name : names) {
      peers.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
      peers.back()->Join(MakeHello(name, kDigest, kModules));
    }
    std::vector<wire::RoundTask> tasks;
    for (auto& p : peers) tasks.push_back(p->Expect<wire::RoundTask>());
    return tasks;
  }

  // The L2 distance between the committed global adapter of round 1 and the one the tasks sent.
  // Stops the coordinator first (it holds the state directory's lock).
  double GlobalMove(const wire::RoundTask& task) {
    StopCoordinator();
    Result<CheckpointStore> store = CheckpointStore::Open(config_.state_dir);
    EXPECT_TRUE(store.ok());
    Result<std::optional<Checkpoint>> latest = store->LoadLatest();
    EXPECT_TRUE(latest.ok() && latest->has_value());
    double sum = 0;
    for (const auto& [name, t] : (*latest)->state.adapter) {
      const std::vector<double> now = ToDoubles(t), before = ToDoubles(task.tensors.at(name));
      for (std::size_t i = 0; i < now.size(); ++i) sum += (now[i] - before[i]) * (now[i] - before[i]);
    }
    return std::sqrt(sum);
  }
};

// The poisoning seen in the field: a finite upload of 1e30 values took the global factors to
// 3.3e29. Clipped to the bound, it moves the average by at most its weight times the bound.
TEST_F(CoordinatorRobustTest, AnUploadThatMovesTheModelTooFarIsClippedToTheBound) {
  config_.round.quorum = 2;
  config_.robust.norm_bound = 1.0;
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  std::vector<std::unique_ptr<TestPeer>> peers;
  const auto tasks = JoinAll(peers, {"honest", "hostile"});
  peers[0]->Send(Answer(tasks[0], 0.01f, /*constant=*/false));  // Change of norm 0.01 * sqrt(34).
  peers[1]->Send(Answer(tasks[1], 1e30f, /*constant=*/true));
  peers[0]->Expect<wire::Ack>();
  peers[1]->Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"norm_clipped\":{\"hostile\":"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"norm_rejected\":{}"), std::string::npos) << round1;
  // Both weigh 0.5: the global moves by at most 0.5 * 0.058 + 0.5 * 1.0.
  EXPECT_LT(GlobalMove(tasks[0]), 0.5 * 0.01 * std::sqrt(34.0) + 0.5 + 1e-6);
  EXPECT_GT(GlobalMove(tasks[0]), 0.4);
}

TEST_F(CoordinatorRobustTest, WithRejectAnUploadBeyondTheBoundIsRefusedAndLeftOut) {
  config_.robust.norm_bound = 1.0;
  config_.robust.norm_action = "reject";
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  std::vector<std::unique_ptr<TestPeer>> peers;
  const auto tasks = JoinAll(peers, {"honest", "hostile"});
  peers[1]->Send(Answer(tasks[1], 1e3f, /*constant=*/true));
  const wire::Error refused = peers[1]->Expect<wire::Error>();
  EXPECT_EQ(refused.code, ErrorCode::kUpdateNormExceeded);
  EXPECT_NE(refused.message.find("above the coordinator's bound 1"), std::string::npos)
      << refused.message;
  peers[0]->Send(Answer(tasks[0], 0.01f, /*constant=*/false));
  peers[0]->Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"weights\":{\"honest\":1"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"norm_rejected\":{\"hostile\":"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"refusals\":{\"UPDATE_NORM_EXCEEDED\":1}"), std::string::npos) << round1;
  EXPECT_LT(GlobalMove(tasks[0]), 0.01 * std::sqrt(34.0) + 1e-6);
}

TEST_F(CoordinatorRobustTest, NormsOfEveryRoundAreInTheMetrics) {
  config_.round.quorum = 2;
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  std::vector<std::unique_ptr<TestPeer>> peers;
  const auto tasks = JoinAll(peers, {"a", "b"});
  peers[0]->Send(Answer(tasks[0], 0.5f, /*constant=*/false));  // 34 values: norm 0.5 * sqrt(34).
  peers[1]->Send(Answer(tasks[1], 1.0f, /*constant=*/false));
  peers[0]->Expect<wire::Ack>();
  peers[1]->Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  const std::string max = "\"update_norm_max\":" + std::to_string(std::sqrt(34.0)).substr(0, 5);
  EXPECT_NE(round1.find(max), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"norm_clipped\":{}"), std::string::npos) << round1;
}

TEST_F(CoordinatorRobustTest, TheShareCapBoundsAClientThatClaimsManyExamples) {
  config_.round.min_clients = 3;
  config_.round.quorum = 3;
  config_.strategy.max_weight_share = 0.5;
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  std::vector<std::unique_ptr<TestPeer>> peers;
  const auto tasks = JoinAll(peers, {"a", "b", "greedy"});
  for (std::size_t k = 0; k < 3; ++k) {
    wire::Update u = Answer(tasks[k], 0.1f, /*constant=*/false);
    if (k == 2) u.num_examples = 900'000;  // Under the example cap, but 0.9995 of the total.
    peers[k]->Send(u);
    peers[k]->Expect<wire::Ack>();
  }
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"weights\":{\"a\":0.25,\"b\":0.25,\"greedy\":0.5}"), std::string::npos)
      << round1;
}

TEST_F(CoordinatorRobustTest, MultiKrumLeavesOutTheOutlyingUploadAndRecordsItsZeroWeight) {
  config_.round.min_clients = 5;
  config_.round.quorum = 5;
  config_.strategy.rule = {.name = "multi_krum", .krum_byzantine = 1};
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  std::vector<std::unique_ptr<TestPeer>> peers;
  const auto tasks = JoinAll(peers, {"a", "b", "c", "d", "hostile"});
  for (std::size_t k = 0; k < 5; ++k) {
    const float shift = k == 4 ? -0.9f : 0.01f * static_cast<float>(k + 1);
    peers[k]->Send(Answer(tasks[k], shift, /*constant=*/false));
    peers[k]->Expect<wire::Ack>();
  }
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"hostile\":0"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"multi_krum.excluded\":1"), std::string::npos) << round1;
  // The four honest shifts average 0.025 per value.
  EXPECT_NEAR(GlobalMove(tasks[0]), 0.025 * std::sqrt(34.0), 1e-6);
}

}  // namespace
}  // namespace fedlora::server
