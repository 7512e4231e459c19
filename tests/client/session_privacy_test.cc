// The client's side of differential privacy against a real coordinator over inproc: a DP task's
// update is clipped before it leaves, and a client that requires DP fails closed.
#include <gtest/gtest.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "client/session.h"
#include "tests/client/fake_worker.h"
#include "tests/server/coordinator_harness.h"

namespace fedlora::client {
namespace {

using testing::FakeWorker;
using testing::kDigest;

class SessionPrivacyTest : public fedlora::testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("session_privacy");
    config_.transport.bind =
        StrCat("inproc://session-privacy-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    client_config_.coordinator = config_.transport.bind;
    client_config_.transport.reconnect_min_ms = 10;
    client_config_.transport.reconnect_max_ms = 50;
  }
  // alice and bob (FakeWorker: every value + 0.25, a change of L2 norm 0.25 sqrt(40) = 1.58) run
  // to the end of the run.
  void RunAliceAndBob(const ClientPrivacyConfig& alice_policy) {
    const Status started = LaunchCoordinator(system_clock_);
    ASSERT_TRUE(started.ok()) << started.ToString();
    ClientConfig a = client_config_, b = client_config_;
    a.name = "alice";
    a.privacy = alice_policy;
    b.name = "bob";
    ClientSession sa(a, alice_, context_, system_clock_), sb(b, bob_, context_, system_clock_);
    Status ra, rb;
    std::thread ta([&] { ra = sa.Run(); });
    std::thread tb([&] { rb = sb.Run(); });
    ta.join();
    tb.join();
    ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
    EXPECT_TRUE(ra.ok()) << ra.ToString();
    EXPECT_TRUE(rb.ok()) << rb.ToString();
  }

  ClientConfig client_config_;
  FakeWorker alice_{"alice", kDigest}, bob_{"bob", kDigest};
};

// Without the session's clip the coordinator would refuse both uploads (PRIVACY_MISMATCH).
TEST_F(SessionPrivacyTest, ATaskThatAsksForPrivacyHasItsChangeClippedBeforeItLeaves) {
  config_.privacy = {.enabled = true, .clip = 1.0, .noise_multiplier = 0.5};
  RunAliceAndBob({});
  const nlohmann::json line = nlohmann::json::parse(MetricsLines().at(1));
  EXPECT_EQ(line["privacy"]["uploads"], 2);
  EXPECT_EQ(line["privacy"]["clipped"], 2);
  EXPECT_EQ(line["privacy"]["clipped_fraction"], 1.0);
  EXPECT_TRUE(line["refusals"].empty()) << line["refusals"];
  EXPECT_NEAR(line["update_norm_max"].get<double>(), 1.0, 1e-6);
}

// A data owner who requires DP is never trained for by a coordinator that does not provide it:
// the task is refused with PRIVACY_MISMATCH before any training, and the coordinator counts it.
TEST_F(SessionPrivacyTest, AClientThatRequiresPrivacyRefusesATaskWithoutItAndNeverTrains) {
  RunAliceAndBob({.required = true});
  EXPECT_EQ(alice_.trains.load(), 0);
  EXPECT_EQ(bob_.trains.load(), 1);
  const nlohmann::json line = nlohmann::json::parse(MetricsLines().at(1));
  EXPECT_EQ(line["task_refusals"]["PRIVACY_MISMATCH"], 1);
  EXPECT_EQ(line["clients_reported"], 1);
  EXPECT_EQ(line["privacy"], nullptr);
}

// ...and so is one whose policy the coordinator's DP does not meet (more clip than it allows).
TEST_F(SessionPrivacyTest, AClientRefusesATaskWhoseClipIsAboveItsPolicy) {
  config_.privacy = {.enabled = true, .clip = 1.0, .noise_multiplier = 0.5};
  RunAliceAndBob({.required = true, .max_clip = 0.5});
  EXPECT_EQ(alice_.trains.load(), 0);
  const nlohmann::json line = nlohmann::json::parse(MetricsLines().at(1));
  EXPECT_EQ(line["task_refusals"]["PRIVACY_MISMATCH"], 1);
  EXPECT_EQ(line["privacy"]["uploads"], 1);
}

// Adaptive clipping: the session reports whether the change was within the clip (FakeWorker's is
// not), and the coordinator raises the next clip (sigma_b 0.06: the noised share is 0 +- 0.03).
TEST_F(SessionPrivacyTest, WithAdaptiveClippingTheClientReportsWhetherItsChangeWasWithinTheClip) {
  config_.privacy = {.enabled = true,
                     .clip = 1.0,
                     .noise_multiplier = 0.1,
                     .target_quantile = 0.5,
                     .count_noise_multiplier = 0.06};
  RunAliceAndBob({});
  const nlohmann::json p = nlohmann::json::parse(MetricsLines().at(1))["privacy"];
  EXPECT_EQ(p["uploads"], 2);
  EXPECT_NEAR(p["within_clip"].get<double>(), 0.0, 0.3);
  EXPECT_GT(p["clip_next"].get<double>(), 1.0);
}

}  // namespace
}  // namespace fedlora::client
