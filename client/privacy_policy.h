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

// Sample-level DP-SGD on this client's own data (client/train/dp_sgd.h), whatever the
// coordinator asks: every training task runs DP-SGD, and the client's own accountant
// (client/train/dp_sgd_budget.h) refuses a task whose steps would take its ε past the target.
struct DpSgdConfig {
  bool enabled = false;
  double clip = 1.0;              // C: each example's gradient is clipped to this L2 norm.
  double noise_multiplier = 1.0;  // σ: N(0, σ²C²) per coordinate of each step's sum.
  // q: each example's chance to join a step's batch; 0 = train.batch_size / examples.
  double sample_rate = 0;
  double target_epsilon = 0;  // Required (> 0) when enabled: over every round, ever.
  double delta = 1e-5;
};

struct ClientPrivacyConfig {
  bool required = false;            // Refuse tasks without differential privacy...
  double max_clip = 0;              // ...or whose clip is above this (0: any)...
  double min_noise_multiplier = 0;  // ...or whose noise multiplier is below this...
  double max_epsilon = 0;           // ...or whose budget is above this, or unset (0: any).
  DpSgdConfig dp_sgd;
};

// OK when a task with `privacy` (nullopt: none) may be trained for. Otherwise kFailedPrecondition
// with detail PRIVACY_MISMATCH, saying which requirement it misses.
Status CheckTaskPrivacy(const ClientPrivacyConfig& policy,
                        const std::optional<wire::PrivacyParams>& privacy);

}  // namespace fedlora::client
