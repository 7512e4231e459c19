// corrections.h — appending to the base-correction log, and compacting it (FedEx-LoRA, FLoRA).
//
// After each append, if replaying the log since its snapshot costs at least `compact_ratio`
// times what a fresh snapshot would, every module's corrections are compacted losslessly
// (common/lora/factor_math.h Compact, ALGORITHMS.md §10) into a new snapshot: a low-rank pair,
// or a dense delta when that is smaller. Compaction happens at aggregation time, before anyone
// evaluates the new version, so each version has exactly one canonical form.
#pragma once

#include "common/status.h"
#include "server/correction_log.h"

namespace fedlora::server {

// Base-weight correction log (FedEx-LoRA, FLoRA).
struct CorrectionConfig {
  // Compact the log into a snapshot once replaying it costs at least this multiple of the
  // snapshot's size.
  double compact_ratio = 1.0;
};

// Appends `entry` to `log` and compacts if worthwhile. `dtype` is the dtype snapshots are
// stored in (f32 for the coordinator).
Status AppendCorrection(CorrectionLog& log, CorrectionEntry entry, const CorrectionConfig& config,
                        DType dtype);

// Bytes of the snapshot compaction would produce now (an upper bound: exact rank unknown).
std::size_t EstimatedSnapshotBytes(const CorrectionLog& log, DType dtype);

}  // namespace fedlora::server
