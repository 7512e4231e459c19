// privacy_ledger.h — what a differentially private run has spent, and may still spend
// (docs/privacy.md).
//
// Each released round is one step of the Poisson-subsampled Gaussian mechanism (sample rate q,
// noise multiplier sigma) for the RDP accountant (common/privacy/rdp_accountant.h). The ledger
// remembers those steps as (q, sigma, rounds) runs, so a checkpoint restores the exact spend even
// when a restart changes the configuration, and answers before each round whether releasing it
// stays within the budget. Torch-free; a value owned by the coordinator's loop thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/privacy/composition_log.h"
#include "common/status.h"
#include "server/config.h"

namespace fedlora::server {

class PrivacyLedger {
 public:
  // The ledger of a run with `config` (enabled) planned for `rounds` rounds: sigma is the
  // configured one or, when 0, the smallest that fits target_epsilon in `rounds` rounds.
  // kFailedPrecondition naming the keys when the budget cannot hold even one round, or when
  // adaptive clipping's count noise leaves nothing for the update (2 sigma_b <= sigma).
  static Result<PrivacyLedger> Create(const PrivacyConfig& config, std::uint32_t rounds);

  // Takes over what a checkpoint recorded (ToJson). kDataLoss naming `what` when it is damaged.
  Status Restore(const std::string& json, std::string_view what);
  // The rounds released so far, as JSON for the checkpoint.
  std::string ToJson() const;

  // The clip of the next round: privacy.clip, or where adaptive clipping has moved it.
  double clip() const { return clip_; }
  bool adaptive() const { return config_.target_quantile > 0; }
  // sigma: what the accountant composes per round.
  double noise_multiplier() const { return sigma_; }
  // The noise multiplier of the update itself: sigma, or with adaptive clipping
  // (sigma^-2 - (2 sigma_b)^-2)^-1/2 (Andrew et al. 2021, Theorem 1).
  double update_noise_multiplier() const;
  double count_noise_multiplier() const { return config_.count_noise_multiplier; }
  double sample_rate() const { return config_.sample_rate; }
  double delta() const { return config_.delta; }
  double target_epsilon() const { return config_.target_epsilon; }
  bool sigma_solved() const { return sigma_solved_; }
  std::uint64_t rounds_released() const;

  // ε (at delta) of the rounds released so far; 0 before the first.
  double EpsilonSpent() const;
  // ε if one more round were released.
  double EpsilonAfterNextRound() const;
  // Whether one more round stays within target_epsilon (always, without a budget).
  bool NextRoundFits() const;
  // Records one released round.
  void RecordRound();
  // Adaptive clipping, after a released round whose noised share of clients within the clip was
  // `within`: C <- C exp(-eta (within - gamma)).
  void AdaptClip(double within);

 private:
  PrivacyConfig config_;
  double sigma_ = 0;
  bool sigma_solved_ = false;
  double clip_ = 0;
  privacy::CompositionLog released_;  // One step per released round.
};

}  // namespace fedlora::server
