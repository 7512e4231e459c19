// round_metrics.h — one line of metrics.jsonl: what happened in one committed round.
//
// The field names are a public interface (outside tools read them); README.md documents each.
// Never rename one; add new fields instead.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/wire/messages.h"

namespace fedlora::server {

// A differentially private round (docs/privacy.md): what it spent and how.
struct RoundPrivacy {
  double epsilon = 0;                  // Spent by the run's released rounds, this one included...
  double delta = 0;                    // ...at this delta...
  double target_epsilon = 0;           // ...of this budget (0: none).
  double noise_multiplier = 0;         // sigma (what the accountant composes).
  double update_noise_multiplier = 0;  // The update's own (below sigma with adaptive clipping).
  double clip = 0;                     // C of this round...
  double clip_next = 0;                // ...and of the next (adaptive clipping moves it).
  std::optional<double> within_clip;   // Adaptive clipping: the noised share within C.
  double sample_rate = 0;              // q (Poisson).
  std::uint32_t sampled = 0;           // Clients the round sampled...
  std::uint32_t population = 0;        // ...of this many live, eligible clients.
  double denominator = 0;              // The mean's fixed denominator: q x population (>= 1).
  std::uint32_t clipped = 0;           // Uploads whose change was clipped to C (by their client)...
  std::uint32_t uploads = 0;           // ...of this many aggregated.
  // Distributed noise (with secure aggregation): each client adds 1/noise_share_clients of the
  // variance, so the sum of the `uploads` carries uploads/noise_share_clients >= 1 of it;
  // 0: the coordinator added it (central). A round with too few inputs gets central noise.
  std::uint32_t noise_share_clients = 0;
};

struct RoundMetrics {
  std::uint64_t round = 0;
  std::string strategy;
  std::string weighting;
  std::uint32_t clients_selected = 0;   // Clients sent a RoundTask (over all attempts).
  std::uint32_t clients_reported = 0;   // Accepted updates aggregated.
  std::uint32_t clients_failed = 0;     // Selected clients that dropped, erred or timed out.
  std::uint32_t attempts = 0;           // Selection attempts (1 unless the quorum was missed).
  std::optional<double> train_loss;     // Mean of reporters' train losses, weighted by samples.
  std::optional<double> eval_loss;      // Per-token NLL of the new global adapter on the
                                        // evaluating clients' held-out data.
  std::uint32_t eval_clients = 0;
  std::uint64_t eval_tokens = 0;
  std::uint64_t eval_examples = 0;      // Held-out windows or examples evaluated.
  // Classification: label-token accuracy of the new global adapter, weighted by examples.
  std::optional<double> eval_accuracy;
  // ...and what always answering the most frequent class of those examples would score.
  std::optional<double> eval_majority_accuracy;
  // Formats with reference answers (GSM8K): exact match of greedy generations, client mean.
  std::optional<double> eval_exact_match;
  std::uint64_t bytes_up = 0;           // Update messages accepted (envelope + tensor frames).
  std::uint64_t bytes_down = 0;         // RoundTask messages sent, less their correction payload.
  std::uint64_t params_up = 0;          // Scalars in the accepted updates' tensors.
  std::uint64_t params_down = 0;        // Scalars in the RoundTasks' adapter tensors.
  // Base-weight corrections (fedex, flora) sent this round in any task, evaluation included.
  std::uint64_t correction_params_down = 0;
  std::uint64_t correction_bytes_down = 0;
  std::uint64_t eval_bytes_up = 0;      // EvalResult messages.
  std::uint64_t eval_bytes_down = 0;    // EvalTask messages.
  double seconds = 0;                   // Wall time from the first task sent to the commit.
  std::map<std::string, double, std::less<>> weights;  // Client id -> aggregation weight.
  // Client id -> the example count it declared, for clients weighted at
  // strategy.max_examples_per_client instead.
  std::map<std::string, std::uint64_t, std::less<>> examples_capped;
  // The L2 norm of the aggregated uploads' changes to their tasks (before clipping): median and
  // largest; null without uploads. Client id -> that norm, for uploads clipped to
  // robust.norm_bound, and for uploads refused for exceeding it (norm_action: reject).
  std::optional<double> update_norm_median;
  std::optional<double> update_norm_max;
  std::map<std::string, double, std::less<>> norm_clipped;
  std::map<std::string, double, std::less<>> norm_rejected;
  // Per client that trains with DP-SGD: the ε its own accountant reports spent on its data.
  std::map<std::string, double, std::less<>> dp_sgd_epsilon;
  std::map<std::string, std::uint32_t, std::less<>> ranks;   // Client id -> top LoRA rank.
  std::map<std::string, std::uint32_t, std::less<>> depths;  // Client id -> layers with LoRA.
  std::uint64_t base_version = 0;       // Base-correction version after the round.
  // Since the previous commit: messages refused with a typed error, by its name
  // ("TASK_MISMATCH": 2); sessions closed because their key left authorized_clients; accepted
  // uploads taken out of aggregation for that reason; CURVE handshakes the ZAP handler refused.
  std::map<std::string, std::uint32_t, std::less<>> refusals;
  // Since the previous commit: tasks clients refused, by the error they gave ("PRIVACY_MISMATCH":
  // a client whose privacy policy the task does not meet).
  std::map<std::string, std::uint32_t, std::less<>> task_refusals;
  std::uint32_t clients_revoked = 0;
  std::uint32_t uploads_dropped = 0;
  std::uint64_t handshakes_denied = 0;
  wire::Metrics strategy_metrics;
  std::optional<RoundPrivacy> privacy;  // A "privacy" object; null without privacy.enabled.
  std::string timestamp;                // UTC, ISO 8601, at commit.
  // Written by whoever runs the coordinator in-process (fedlora-sim: virtual clock, fleet and
  // memory figures), as a "simulation" object after "timestamp"; absent when empty.
  std::vector<std::pair<std::string, double>> simulation;
};

// Called on the coordinator's thread at each commit with the round's metrics, before the line
// is written: returns the "simulation" fields for it.
using RoundAnnotator = std::function<std::vector<std::pair<std::string, double>>(const RoundMetrics&)>;

// One JSON object on one line, fields in a fixed order; absent optionals are null.
std::string ToJsonLine(const RoundMetrics& m);

// "2026-11-23T23:40:01Z" for now.
std::string UtcTimestamp();

}  // namespace fedlora::server
