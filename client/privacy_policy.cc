#include "client/privacy_policy.h"

namespace fedlora::client {
namespace {

Status Mismatch(const std::string& why) {
  return Status(StatusCode::kFailedPrecondition, why,
                static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
}

}  // namespace

Status CheckTaskPrivacy(const ClientPrivacyConfig& policy,
                        const std::optional<wire::PrivacyParams>& privacy) {
  if (!policy.required) return OkStatus();
  if (!privacy) {
    return Mismatch(
        "this client requires differential privacy (privacy.required) and the task "
        "asks for none");
  }
  if (policy.max_clip > 0 && privacy->clip > policy.max_clip) {
    return Mismatch(StrCat("the task's privacy clip ", privacy->clip,
                           " is above this client's privacy.max_clip ", policy.max_clip));
  }
  if (privacy->noise_multiplier < policy.min_noise_multiplier) {
    return Mismatch(StrCat("the task's noise multiplier ", privacy->noise_multiplier,
                           " is below this client's privacy.min_noise_multiplier ",
                           policy.min_noise_multiplier));
  }
  if (policy.max_epsilon > 0 &&
      (privacy->target_epsilon == 0 || privacy->target_epsilon > policy.max_epsilon)) {
    return Mismatch(privacy->target_epsilon == 0
                        ? StrCat("the run has no privacy budget and this client's ",
                                 "privacy.max_epsilon is ", policy.max_epsilon)
                        : StrCat("the run's privacy budget epsilon ", privacy->target_epsilon,
                                 " is above this client's privacy.max_epsilon ",
                                 policy.max_epsilon));
  }
  return OkStatus();
}

}  // namespace fedlora::client
