// privacy_policy.h — what a data owner requires of the differential privacy of every round it
// trains for (docs/privacy.md), and the check of a task against it: a client fails closed.
//
// Whatever the policy, a task that asks for DP (wire::PrivacyParams) has its update's change
// clipped by the client session before it leaves (privacy/update_change.h). The policy decides
// which tasks the client accepts at all: with `required`, a task without DP, with a larger clip,
// with less noise or with a larger (or no) budget than the owner allows is refused with
// PRIVACY_MISMATCH before any training, and logged on both sides.
#pragma once

#include <optional>

#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

struct ClientPrivacyConfig {
  bool required = false;            // Refuse tasks without differential privacy...
  double max_clip = 0;              // ...or whose clip is above this (0: any)...
  double min_noise_multiplier = 0;  // ...or whose noise multiplier is below this...
  double max_epsilon = 0;           // ...or whose budget is above this, or unset (0: any).
};

// OK when a task with `privacy` (nullopt: none) may be trained for. Otherwise kFailedPrecondition
// with detail PRIVACY_MISMATCH, saying which requirement it misses.
Status CheckTaskPrivacy(const ClientPrivacyConfig& policy,
                        const std::optional<wire::PrivacyParams>& privacy);

}  // namespace fedlora::client
