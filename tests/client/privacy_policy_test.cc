#include "client/privacy_policy.h"

#include <gtest/gtest.h>

namespace fedlora::client {
namespace {

wire::PrivacyParams Task(double clip, double sigma, double target) {
  return wire::PrivacyParams{clip, sigma, 1.0, 1e-5, 0.0, target};
}

void ExpectRefused(const Status& s, std::string_view says) {
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.detail(), static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
  EXPECT_NE(s.message().find(says), std::string::npos) << s.message();
}

TEST(PrivacyPolicyTest, WithoutARequirementEveryTaskIsTrainedFor) {
  EXPECT_TRUE(CheckTaskPrivacy({}, std::nullopt).ok());
  EXPECT_TRUE(CheckTaskPrivacy({}, Task(100, 0, 0)).ok());
}

TEST(PrivacyPolicyTest, ARequiringClientRefusesEveryTaskShortOfItsPolicySayingWhich) {
  const ClientPrivacyConfig policy{
      .required = true, .max_clip = 1.0, .min_noise_multiplier = 0.8, .max_epsilon = 8};
  EXPECT_TRUE(CheckTaskPrivacy(policy, Task(1.0, 0.8, 8)).ok());
  EXPECT_TRUE(CheckTaskPrivacy(policy, Task(0.1, 2.0, 1)).ok());
  ExpectRefused(CheckTaskPrivacy(policy, std::nullopt), "asks for none");
  ExpectRefused(CheckTaskPrivacy(policy, Task(1.5, 0.8, 8)), "privacy.max_clip 1");
  ExpectRefused(CheckTaskPrivacy(policy, Task(1.0, 0.5, 8)), "privacy.min_noise_multiplier 0.8");
  ExpectRefused(CheckTaskPrivacy(policy, Task(1.0, 0.8, 10)), "privacy.max_epsilon 8");
  ExpectRefused(CheckTaskPrivacy(policy, Task(1.0, 0.8, 0)), "has no privacy budget");
  // Required alone: any DP task will do, none without.
  EXPECT_TRUE(CheckTaskPrivacy({.required = true}, Task(50, 0.1, 0)).ok());
  ExpectRefused(CheckTaskPrivacy({.required = true}, std::nullopt), "privacy.required");
}

}  // namespace
}  // namespace fedlora::client
