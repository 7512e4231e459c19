// The coordinator's differential privacy end to end (docs/privacy.md): a real Coordinator
// (FedAvg) and hand-driven peers on inproc sockets.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "server/checkpoint_store.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"

namespace fedlora::server {
namespace {

using testing::kDigest;
using testing::kModules;
using testing::MakeHello;
using testing::TestPeer;
using wire::ErrorCode;

// dp-accounting 0.6.0: rounds of PoissonSampledDpEvent(1.0, GaussianDpEvent(2.0)) at delta 1e-5.
constexpr double kEpsilonAfter1 = 2.165715659029443;
constexpr double kEpsilonAfter2 = 3.1889915626335874;

class CoordinatorPrivacyTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("privacy");
    config_.privacy = {.enabled = true,
                       .clip = 1.0,
                       .noise_multiplier = 2.0,
                       .target_epsilon = 0,
                       .delta = 1e-5,
                       .sample_rate = 1.0};
  }
  Status Launch() { return LaunchOnInproc("privacy"); }
  nlohmann::json Privacy(std::size_t line) {
    return nlohmann::json::parse(MetricsLines().at(line))["privacy"];
  }
  // Two clients join; each answers its task with every value shifted by `shift` (a's change
  // has L2 norm |shift| x sqrt(40): the rank-2 q and v factors hold 40 values).
  void RunRound(float shift_a, float shift_b, bool a_refused = false) {
    TestPeer a(context_, coordinator_->endpoint());
    TestPeer b(context_, coordinator_->endpoint());
    a.Join(MakeHello("a", kDigest, kModules));
    b.Join(MakeHello("b", kDigest, kModules));
    const wire::RoundTask ta = a.Expect<wire::RoundTask>();
    const wire::RoundTask tb = b.Expect<wire::RoundTask>();
    ASSERT_TRUE(ta.privacy.has_value());
    EXPECT_EQ(ta.privacy->clip, 1.0);
    EXPECT_EQ(ta.privacy->noise_multiplier, 2.0);
    EXPECT_EQ(ta.privacy->sample_rate, 1.0);
    a.Send(Answer(ta, shift_a, false));
    if (a_refused) {
      EXPECT_EQ(a.ExpectError(), ErrorCode::kPrivacyMismatch);
    } else {
      a.Expect<wire::Ack>();
    }
    b.Send(Answer(tb, shift_b, false));
    b.Expect<wire::Ack>();
    ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  }
};

TEST_F(CoordinatorPrivacyTest, EveryTaskCarriesTheClipAndTheMetricsSayWhatTheRoundSpent) {
  ASSERT_TRUE(Launch().ok());
  RunRound(0.01f, 0.15f);  // Norms 0.063 and 0.95: within the clip 1.
  EXPECT_TRUE(MetricsLines().at(0).find("\"privacy\":null") != std::string::npos);  // Round 0.
  const nlohmann::json p = Privacy(1);
  EXPECT_NEAR(p["epsilon"].get<double>(), kEpsilonAfter1, 1e-5);
  EXPECT_EQ(p["delta"], 1e-5);
  EXPECT_EQ(p["noise_multiplier"], 2.0);
  EXPECT_EQ(p["clip"], 1.0);
  EXPECT_EQ(p["sampled"], 2);
  EXPECT_EQ(p["population"], 2);
  EXPECT_EQ(p["denominator"], 2.0);
  EXPECT_EQ(p["uploads"], 2);
  EXPECT_EQ(p["clipped"], 0);
}

// A client that ignores the clip is refused (never clipped by the coordinator, which would hide
// it); the round goes on with the others.
TEST_F(CoordinatorPrivacyTest, AnUploadWhoseChangeIsAboveTheClipIsRefusedWithPrivacyMismatch) {
  ASSERT_TRUE(Launch().ok());
  RunRound(/*shift_a=*/0.5f, 0.01f, /*a_refused=*/true);  // a: norm 3.2 > 1.
  const nlohmann::json line = nlohmann::json::parse(MetricsLines().at(1));
  EXPECT_EQ(line["privacy"]["uploads"], 1);
  EXPECT_EQ(line["refusals"]["PRIVACY_MISMATCH"], 1);
}

TEST_F(CoordinatorPrivacyTest, TheRunStopsBeforeTheRoundThatWouldSpendPastTheBudget) {
  config_.rounds = 5;
  config_.privacy.target_epsilon = 4.0;  // Rounds 1 and 2 fit (3.19); round 3 would spend 4.01.
  ASSERT_TRUE(Launch().ok());
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  for (int round = 1; round <= 2; ++round) {
    const wire::RoundTask ta = a.Expect<wire::RoundTask>();
    const wire::RoundTask tb = b.Expect<wire::RoundTask>();
    EXPECT_EQ(ta.round, static_cast<std::uint64_t>(round));
    EXPECT_EQ(ta.privacy->target_epsilon, 4.0);
    a.Send(Answer(ta, 0.01f, false));
    b.Send(Answer(tb, 0.01f, false));
    a.Expect<wire::Ack>();
    b.Expect<wire::Ack>();
  }
  const wire::Bye bye = a.Expect<wire::Bye>();
  EXPECT_NE(bye.reason.find("privacy budget spent"), std::string::npos) << bye.reason;
  EXPECT_NE(bye.reason.find("ends after round 2"), std::string::npos) << bye.reason;
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  ASSERT_EQ(MetricsLines().size(), 3u);  // Rounds 0, 1, 2.
  EXPECT_NEAR(Privacy(2)["epsilon"].get<double>(), kEpsilonAfter2, 1e-5);
}

TEST_F(CoordinatorPrivacyTest, AConfigurationWhoseFirstRoundExceedsTheBudgetIsRefusedAtStart) {
  config_.privacy.target_epsilon = 2.0;  // One round spends 2.17.
  const Status started = Launch();
  ASSERT_EQ(started.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(started.message().find("privacy.target_epsilon 2 is below what one round spends"),
            std::string::npos)
      << started.message();
}

TEST_F(CoordinatorPrivacyTest, AResumedRunGoesOnFromWhatItSpentAndCannotDropPrivacy) {
  ASSERT_TRUE(Launch().ok());
  RunRound(0.01f, 0.01f);
  coordinator_.reset();
  config_.rounds = 2;
  ASSERT_TRUE(Launch().ok());
  RunRound(0.01f, 0.01f);
  EXPECT_NEAR(Privacy(2)["epsilon"].get<double>(), kEpsilonAfter2, 1e-5);
  coordinator_.reset();  // Releases the state directory's lock.
  const std::optional<Checkpoint> latest = CheckpointStore::Open(dir_).value().LoadLatest().value();
  EXPECT_NE(latest->privacy_json.find("\"rounds\":2"), std::string::npos) << latest->privacy_json;
  coordinator_.reset();
  config_.rounds = 3;
  config_.privacy.enabled = false;
  const Status started = Launch();
  ASSERT_EQ(started.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(started.message().find("would void their guarantee"), std::string::npos)
      << started.message();
}

// A private round has no quorum: with nobody sampled it still releases (noise only), and the
// accountant counts it, since the sample is what it assumes.
TEST_F(CoordinatorPrivacyTest, ARoundThatSampledNobodyReleasesTheNoisedGlobalAndIsCounted) {
  config_.privacy.sample_rate = 1e-12;  // Nobody is sampled (1 chance in 5e11 otherwise).
  ASSERT_TRUE(Launch().ok());
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  coordinator_.reset();  // Releases the state directory's lock.
  const nlohmann::json p = Privacy(1);
  EXPECT_EQ(p["sampled"], 0);
  EXPECT_EQ(p["uploads"], 0);
  EXPECT_EQ(p["denominator"], 1.0);
  EXPECT_GT(p["epsilon"].get<double>(), 0.0);
  // The B factors start at zero; the committed ones moved by noise of deviation sigma C = 2
  // (over a denominator of 1).
  const TensorMap released =
      CheckpointStore::Open(dir_).value().LoadLatest().value()->state.adapter;
  double squares = 0;
  std::size_t n = 0;
  for (const auto& [name, t] : released) {
    if (name.find("lora_B") == std::string::npos) continue;
    for (double x : ToDoubles(t)) {
      squares += x * x;
      ++n;
    }
  }
  ASSERT_GT(n, 0u);
  EXPECT_GT(std::sqrt(squares / static_cast<double>(n)), 1.0);
}

// Adaptive clipping: each upload reports whether its change was within the clip; the noised
// share moves the next round's clip (sigma 0.1 and sigma_b 0.06: the share is 1 +- 0.03 here).
TEST_F(CoordinatorPrivacyTest, AdaptiveClippingMovesTheNextRoundsClipAndNeedsEveryClientsBit) {
  config_.rounds = 2;
  config_.privacy.noise_multiplier = 0.1;
  config_.privacy.target_quantile = 0.5;
  config_.privacy.count_noise_multiplier = 0.06;
  ASSERT_TRUE(Launch().ok());
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const auto within = [](wire::Update u) {
    u.metrics[std::string(wire::kWithinClipMetric)] = 1.0;
    return u;
  };
  wire::RoundTask ta = a.Expect<wire::RoundTask>(), tb = b.Expect<wire::RoundTask>();
  EXPECT_TRUE(ta.privacy->adaptive_clip);
  EXPECT_EQ(ta.privacy->clip, 1.0);
  a.Send(within(Answer(ta, 0.01f, false)));
  b.Send(within(Answer(tb, 0.01f, false)));
  a.Expect<wire::Ack>();
  b.Expect<wire::Ack>();
  ta = a.Expect<wire::RoundTask>();
  tb = b.Expect<wire::RoundTask>();
  const double shrunk = std::exp(-0.2 * (1.0 - 0.5));
  EXPECT_NEAR(ta.privacy->clip, shrunk, 0.05);
  a.Send(Answer(ta, 0.01f, false));  // Without the bit: refused.
  EXPECT_EQ(a.ExpectError(), ErrorCode::kPrivacyMismatch);
  b.Send(within(Answer(tb, 0.01f, false)));
  b.Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const nlohmann::json p1 = Privacy(1), p2 = Privacy(2);
  EXPECT_EQ(p1["clip"], 1.0);
  EXPECT_EQ(p1["clip_next"].get<double>(), ta.privacy->clip);
  EXPECT_NEAR(p1["within_clip"].get<double>(), 1.0, 0.3);
  EXPECT_EQ(p2["clip"].get<double>(), ta.privacy->clip);
  EXPECT_EQ(p2["uploads"], 1);
  EXPECT_NEAR(p1["update_noise_multiplier"].get<double>(),
              1.0 / std::sqrt(1.0 / 0.01 - 1.0 / (0.12 * 0.12)), 1e-12);
}

}  // namespace
}  // namespace fedlora::server
