// correction_log.h — the coordinator's append-only log of base-weight corrections.
//
// FedEx-LoRA and FLoRA change the frozen base weights every round. The coordinator never holds
// those weights: it keeps each round's change as low-rank factors (W += U*V, scale folded in),
// versioned by round, and ships every client the entries it has not applied. When replaying the
// log would cost more than a compacted form, the strategy replaces everything so far by a
// snapshot (one compacted pair, or a dense delta when that is smaller); every client then
// rebuilds its base from the pristine weights plus that snapshot, so early and late clients run
// exactly the same fp32 operations and their replicas stay bit-identical.
//
// Torch-free value type: copyable, comparable, serialisable to tensors for checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::server {

// One module's change: W += u*v (u: d_out x K, v: K x d_in), or W += dense (d_out x d_in).
struct ModuleCorrection {
  Tensor u;
  Tensor v;
  Tensor dense;
  bool is_dense() const { return !dense.shape.empty(); }
  std::size_t bytes() const { return u.data.size() + v.data.size() + dense.data.size(); }
  friend bool operator==(const ModuleCorrection&, const ModuleCorrection&) = default;
};

struct CorrectionEntry {
  std::uint64_t version = 0;  // The round that produced it (or, for a snapshot, that it covers).
  std::map<std::string, ModuleCorrection, std::less<>> modules;
  std::size_t bytes() const;
  friend bool operator==(const CorrectionEntry&, const CorrectionEntry&) = default;
};

class CorrectionLog {
 public:
  bool empty() const { return !snapshot_ && entries_.empty(); }
  // The version a client is at once it applied everything; 0 for an empty log.
  std::uint64_t latest_version() const;
  const std::optional<CorrectionEntry>& snapshot() const { return snapshot_; }
  const std::vector<CorrectionEntry>& entries() const { return entries_; }
  // Bytes a client at the snapshot (or the pristine base) downloads to replay the entries.
  std::size_t ReplayBytes() const;

  // Appends `entry`; its version must exceed latest_version() (checked: a strategy bug).
  void Append(CorrectionEntry entry);
  // Replaces the snapshot and every entry with `snapshot`, which must cover exactly them
  // (version == latest_version()).
  void ReplaceWithSnapshot(CorrectionEntry snapshot);

  // The BaseUpdate that brings a client whose base is at `client_version` to the latest
  // version; the correction tensors it names are added to `tensors`. A client at version 0, at
  // a version older than the snapshot, or at a version this log does not know (e.g. newer,
  // after the coordinator restarted from an older checkpoint) gets a rebase: pristine weights,
  // then the snapshot, then every entry.
  wire::BaseUpdate UpdateFor(std::uint64_t client_version, TensorMap* tensors) const;

  // Checkpoint form: tensors named "base.<version>.<module>.{U,V,D}" (snapshot:
  // "base.snapshot.<version>.<module>.{U,V,D}"), and back. kDataLoss on malformed names.
  TensorMap ToTensors() const;
  static Result<CorrectionLog> FromTensors(const TensorMap& tensors);

  friend bool operator==(const CorrectionLog&, const CorrectionLog&) = default;

 private:
  std::optional<CorrectionEntry> snapshot_;
  std::vector<CorrectionEntry> entries_;  // Versions ascending, all > snapshot's.
};

}  // namespace fedlora::server
