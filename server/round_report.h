// round_report.h — what a committed round tells the operator: its metrics.jsonl record
// (RoundMetrics, round_metrics.h) assembled from the round's record, the warning when the norm
// bound cut most uploads, and the one-line summary the coordinator logs.
//
// Pure functions: no clock (the caller passes the commit time), no files, no logging.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/clock.h"
#include "server/round_metrics.h"
#include "server/round_state.h"

namespace fedlora::server {

// What the round's record says, for a commit at `now`: clients, losses (train_loss weighted by
// samples; eval_loss per token; accuracy weighted by examples; exact_match the client mean),
// traffic, aggregation weights, ranks and depths of each task (`modules`: the federation's layout),
// example caps and update norms of the accepted uploads. `run.candidate` must be set. The fields
// kept since the previous commit (refusals, revocations, denied handshakes), the timestamp and the
// simulation annotations are the caller's.
RoundMetrics SummariseRound(const RoundRun& run, std::string_view strategy,
                            const std::string& weighting, std::span<const wire::ModuleInfo> modules,
                            Clock::TimePoint now);

// Empty, or a warning when most uploads (more than one) hit robust.norm_bound `norm_bound`: it is
// cutting honest learning, not just outliers.
std::string NormBoundWarning(const RoundMetrics& m, double norm_bound);

// "round 3/10: 2/2 clients reported, train_loss 1.2345, ..., 0.5 s, up 0.01 MB, down 0.02 MB";
// round 0 is "round 0 (initial adapter)".
std::string RoundSummary(const RoundMetrics& m, std::uint64_t rounds);

}  // namespace fedlora::server
