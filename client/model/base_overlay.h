// base_overlay.h — a worker's corrected base weights (FedEx-LoRA, FLoRA; ALGORITHMS.md §2d, §3d,
// §10): the pristine frozen weights plus the base corrections the coordinator shipped, without
// ever touching the pristine model (which the simulator shares between many workers).
//
// A BaseOverlay is immutable: for every corrected module it holds a dense float32 weight equal
// to pristine + corrections, applied in the BaseUpdate's entry order with the canonical
// arithmetic of common/lora/deterministic_apply.h (dense entries: w = float(double(w) +
// double(d))), so every replica that applies the same corrections gets bit-identical weights.
// Modules never corrected keep the pristine weight (an undefined entry). LlamaModel::Forward
// takes weights() as its per-module weight override.
//
// Workers of one process that are at the same base share one overlay through a
// BaseOverlayCache (held by ModelAssets), keyed by (version, chain): the chain is a SHA-256 hash
// chain over every correction (its version, module and tensor bytes) applied since the last
// rebase, so equal keys mean equal weights. The cache holds weak references: an overlay lives as
// long as some worker uses it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "client/model/llama.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::client {

class BaseOverlay {
 public:
  BaseOverlay(std::uint64_t version, std::string chain, std::vector<at::Tensor> weights)
      : version_(version), chain_(std::move(chain)), weights_(std::move(weights)) {}
  BaseOverlay(const BaseOverlay&) = delete;
  BaseOverlay& operator=(const BaseOverlay&) = delete;

  std::uint64_t version() const { return version_; }
  // Hex hash chain of the corrections since the last rebase ("" for none).
  const std::string& chain() const { return chain_; }
  // By AdaptableModules() index; an undefined entry means the pristine weight. Read-only.
  std::span<const at::Tensor> weights() const { return weights_; }
  std::size_t corrected_modules() const;

 private:
  const std::uint64_t version_;
  const std::string chain_;
  const std::vector<at::Tensor> weights_;
};

// Thread-safe map (version, chain) -> weak reference to a live overlay.
class BaseOverlayCache {
 public:
  std::shared_ptr<const BaseOverlay> Find(std::uint64_t version, const std::string& chain) const;
  // `overlay` itself, or the live overlay already cached under its key (which then wins).
  std::shared_ptr<const BaseOverlay> Share(std::shared_ptr<const BaseOverlay> overlay);
  // Overlays still alive (some worker holds them).
  std::size_t LiveCount() const;

 private:
  using Key = std::pair<std::uint64_t, std::string>;
  mutable std::mutex mu_;
  mutable std::map<Key, std::weak_ptr<const BaseOverlay>> entries_;  // Guarded by mu_.
};

// The version a base is at: 0 for the pristine base (null).
inline std::uint64_t BaseVersionOf(const BaseOverlay* overlay) {
  return overlay == nullptr ? 0 : overlay->version();
}

// The tensor names `update` refers to (so a task's other tensors are its adapter).
std::set<std::string, std::less<>> CorrectionTensorNames(const wire::BaseUpdate& update);

// The base after `update`, starting from `current` (null = pristine at version 0); null again
// when the result is the pristine base at version 0. Nothing is modified: a new overlay shares
// the untouched modules' tensors with `current` and copies the corrected ones. An empty update
// at the current version returns `current`. With `cache`, an equal overlay another worker holds
// is reused (found before any arithmetic) and a new one is published.
// Errors (nothing changes):
//   kFailedPrecondition with detail() = wire::ErrorCode::kBaseVersionMismatch: not a rebase and
//     update.from_version differs from current's version;
//   kInvalidArgument naming the module or tensor: an unknown module, a missing, malformed,
//     misshapen or non-finite tensor, an entry with neither (or both) u/v and dense, or entry
//     versions outside (from_version, to_version].
Result<std::shared_ptr<const BaseOverlay>> ApplyBaseUpdate(
    const LlamaModel& model, const std::shared_ptr<const BaseOverlay>& current,
    const wire::BaseUpdate& update, const TensorMap& tensors, BaseOverlayCache* cache = nullptr);

}  // namespace fedlora::client
