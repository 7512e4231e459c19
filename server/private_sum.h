// private_sum.h — the aggregate of a differentially private round (DP-FedAvg with central
// Gaussian noise; docs/privacy.md).
//
// Each upload's change (privacy/update_change.h: what it uploads minus what its task sent; the
// reverse for strategies that sum task-minus-trained deltas, FSLoRA) is clipped to L2 norm C as
// one vector (again here, so the bound holds whatever reached the fold), placed into the
// strategy's secure-aggregation slots (secagg::PlaceInSlot: full shapes, pruned ranks padded,
// sketches scattered) and added to a running f64 sum D. With adaptive clipping each upload's
// reported bit (within the clip before clipping) is counted, and the count noised at Finish. At
// Finish every element of D gets
// N(0, (sigma C)^2), and the strategy's FinishSecure receives, per slot, the weighted sum
// m G + D (G the global tensor; D alone for delta strategies) with weight m, m the fixed
// denominator: its mean is G + D / m. A client that was sampled but never uploaded counts as no
// change; the noise is the same whoever took part, so the released adapter depends on any one
// client's data only through its clipped change (sensitivity C). Order-independent up to f64
// rounding; memory is one f64 copy of the slots.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/secagg/secure_input.h"
#include "common/wire/messages.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

struct PrivateRoundParams {
  std::vector<wire::SecAggSlot> slots;  // Every tensor the round releases, at full shape.
  bool delta = false;                   // SecureSpec::delta: sum (task - trained).
  double clip = 0;                      // C.
  double noise_multiplier = 0;          // sigma: noise N(0, (sigma C)^2) per element of D.
  double denominator = 1;               // m > 0.
  // Adaptive clipping: > 0 to count the uploads reporting wire::kWithinClipMetric = 1 and noise
  // that count with N(0, count_noise_stddev^2) at Finish (PrivateRoundTally::noised_within).
  double count_noise_stddev = 0;
  crypto::Seed noise_seed{};  // Fresh per round (privacy::FreshNoiseSeed).
};

// What the fold saw, for the round's metrics.
struct PrivateRoundTally {
  std::uint64_t folded = 0;
  // Changes at the bound (within 1e-4 of C: clipped by their client) or above it (scaled down
  // here; the coordinator refuses those before the fold, so none in practice).
  std::uint64_t clipped = 0;
  std::uint64_t within = 0;  // Adaptive clipping: uploads reporting a change within C...
  double noised_within = 0;  // ...and that count with its noise, set by Finish.
};

// Distributed DP (privacy with secure aggregation): `sum`, the decoded secure sum of the
// clients' clipped and noised inputs (uniform weight 1 each), as the release Finish above would
// give: per slot m G + D with weight m, D = Σ x − (Σ w) G the noised sum of the changes (for delta
// strategies, whose inputs are changes already, D = Σ x). `global` holds G. kInternal naming the
// slot when G is missing or of another shape.
Result<secagg::SecureSum> PrivateReleaseOf(const secagg::SecureSum& sum, const TensorMap& global,
                                           bool delta, double denominator);

// The accumulator of one DP round of `strategy` (which must have a secure_spec).
// `tally`, if given, is kept up to date by Fold and must outlive the accumulator.
std::unique_ptr<RoundAccumulator> MakePrivateAccumulator(Strategy& strategy, std::uint64_t round,
                                                         PrivateRoundParams params,
                                                         PrivateRoundTally* tally = nullptr);

}  // namespace fedlora::server
