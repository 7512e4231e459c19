#include "client/model/base_overlay.h"

#include <ATen/ATen.h>

#include <cstring>

#include "common/crypto/sha256.h"
#include "common/lora/deterministic_apply.h"

namespace fedlora::client {
namespace {

Status VersionMismatch(std::uint64_t from, std::uint64_t current) {
  return Status(StatusCode::kFailedPrecondition,
                StrCat("base update starts at version ", from, " but this client's base is at ",
                       "version ", current, " (hint: the coordinator should send a rebase)"),
                static_cast<std::uint32_t>(wire::ErrorCode::kBaseVersionMismatch));
}

void HashU64(crypto::Sha256Hasher& h, std::uint64_t v) {
  std::byte le[8];
  std::memcpy(le, &v, sizeof le);  // The host is little-endian (see common/tensor.cc).
  h.Update(std::span<const std::byte>(le, sizeof le));
}

void HashTensor(crypto::Sha256Hasher& h, const Tensor& t) {
  HashU64(h, static_cast<std::uint64_t>(t.dtype));
  HashU64(h, t.shape.size());
  for (std::int64_t d : t.shape) HashU64(h, static_cast<std::uint64_t>(d));
  h.Update(std::span<const std::byte>(t.data));
}

// One validated correction of one module, ready to apply.
struct ParsedCorrection {
  std::size_t module_index = 0;
  std::int64_t k = 0;            // Columns of u (rows of v); unused for dense.
  bool dense = false;
  std::vector<float> u, v;       // Row-major, widened/narrowed to float as the canonical input.
  std::vector<double> d;         // Dense delta, widened to double.
};

Result<const Tensor*> FindTensor(const TensorMap& tensors, const std::string& name,
                                 const wire::CorrectionRef& ref) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) {
    return InvalidArgument("base correction ", ref.version, " of '", ref.module,
                           "': missing tensor '", name, "'");
  }
  FEDLORA_RETURN_IF_ERROR(Validate(it->second, StrCat("base correction tensor '", name, "'")));
  if (!AllFinite(it->second)) {
    return InvalidArgument("base correction tensor '", name, "' holds NaN or infinity");
  }
  return &it->second;
}

Status CheckShape(const Tensor& t, const std::string& name, std::vector<std::int64_t> expected,
                  bool free_cols = false, bool free_rows = false) {
  bool ok = t.shape.size() == 2;
  if (ok && !free_rows) ok = t.shape[0] == expected[0];
  if (ok && !free_cols) ok = t.shape[1] == expected[1];
  if (!ok) {
    return InvalidArgument("base correction tensor '", name, "' has shape ",
                           ShapeString(t.shape), ", expected ",
                           free_cols   ? StrCat("[", expected[0], ", K]")
                           : free_rows ? StrCat("[K, ", expected[1], "]")
                                       : ShapeString(expected));
  }
  return OkStatus();
}

}  // namespace

std::size_t BaseOverlay::corrected_modules() const {
  std::size_t n = 0;
  for (const at::Tensor& w : weights_) n += w.defined() ? 1 : 0;
  return n;
}

std::shared_ptr<const BaseOverlay> BaseOverlayCache::Find(std::uint64_t version,
                                                          const std::string& chain) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = entries_.find(Key(version, chain));
  return it == entries_.end() ? nullptr : it->second.lock();
}

std::shared_ptr<const BaseOverlay> BaseOverlayCache::Share(
    std::shared_ptr<const BaseOverlay> overlay) {
  if (overlay == nullptr) return overlay;
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(entries_, [](const auto& kv) { return kv.second.expired(); });
  std::weak_ptr<const BaseOverlay>& slot = entries_[Key(overlay->version(), overlay->chain())];
  if (std::shared_ptr<const BaseOverlay> live = slot.lock()) return live;
  slot = overlay;
  return overlay;
}

std::size_t BaseOverlayCache::LiveCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::size_t n = 0;
  for (const auto& [key, weak] : entries_) n += weak.expired() ? 0 : 1;
  return n;
}

std::set<std::string, std::less<>> CorrectionTensorNames(const wire::BaseUpdate& update) {
  std::set<std::string, std::less<>> names;
  for (const wire::CorrectionRef& ref : update.entries) {
    for (const std::string* name : {&ref.u, &ref.v, &ref.dense}) {
      if (!name->empty()) names.insert(*name);
    }
  }
  return names;
}

Result<std::shared_ptr<const BaseOverlay>> ApplyBaseUpdate(
    const LlamaModel& model, const std::shared_ptr<const BaseOverlay>& current,
    const wire::BaseUpdate& update, const TensorMap& tensors, BaseOverlayCache* cache) try {
  const std::uint64_t current_version = BaseVersionOf(current.get());
  if (!update.rebase) {
    if (update.from_version != current_version) {
      return VersionMismatch(update.from_version, current_version);
    }
    if (update.to_version < update.from_version) {
      return InvalidArgument("base update goes back from version ", update.from_version, " to ",
                             update.to_version, " without a rebase");
    }
    if (update.entries.empty() && update.to_version == current_version) return current;
  }

  // Validate every entry and extend the hash chain before any arithmetic.
  const std::vector<wire::ModuleInfo>& modules = model.AdaptableModules();
  std::string chain = update.rebase || current == nullptr ? std::string() : current->chain();
  std::vector<ParsedCorrection> parsed;
  parsed.reserve(update.entries.size());
  for (const wire::CorrectionRef& ref : update.entries) {
    const std::ptrdiff_t index = model.ModuleIndex(ref.module);
    if (index < 0) {
      return InvalidArgument("base correction ", ref.version, " names unknown module '",
                             ref.module, "'");
    }
    if (ref.version > update.to_version || (!update.rebase && ref.version <= update.from_version)) {
      return InvalidArgument("base correction of '", ref.module, "' has version ", ref.version,
                             ", outside (", update.rebase ? 0 : update.from_version, ", ",
                             update.to_version, "]");
    }
    const wire::ModuleInfo& m = modules[static_cast<std::size_t>(index)];
    const bool has_uv = !ref.u.empty() || !ref.v.empty();
    const bool has_dense = !ref.dense.empty();
    if (has_uv == has_dense || (has_uv && (ref.u.empty() || ref.v.empty()))) {
      return InvalidArgument("base correction ", ref.version, " of '", ref.module,
                             "' must name either both u and v or a dense delta");
    }
    crypto::Sha256Hasher hasher;
    hasher.Update(chain);
    hasher.Update(std::string_view("|"));
    HashU64(hasher, ref.version);
    hasher.Update(ref.module);
    hasher.Update(std::string_view(has_dense ? "|D|" : "|UV|"));
    ParsedCorrection c;
    c.module_index = static_cast<std::size_t>(index);
    c.dense = has_dense;
    if (has_dense) {
      FEDLORA_ASSIGN_OR_RETURN(const Tensor* d, FindTensor(tensors, ref.dense, ref));
      FEDLORA_RETURN_IF_ERROR(CheckShape(*d, ref.dense, {m.d_out, m.d_in}));
      HashTensor(hasher, *d);
      c.d = ToDoubles(*d);
    } else {
      FEDLORA_ASSIGN_OR_RETURN(const Tensor* u, FindTensor(tensors, ref.u, ref));
      FEDLORA_ASSIGN_OR_RETURN(const Tensor* v, FindTensor(tensors, ref.v, ref));
      FEDLORA_RETURN_IF_ERROR(CheckShape(*u, ref.u, {m.d_out, 0}, /*free_cols=*/true));
      FEDLORA_RETURN_IF_ERROR(CheckShape(*v, ref.v, {0, m.d_in}, false, /*free_rows=*/true));
      if (u->shape[1] != v->shape[0]) {
        return InvalidArgument("base correction ", ref.version, " of '", ref.module, "': '",
                               ref.u, "' has ", u->shape[1], " columns but '", ref.v, "' has ",
                               v->shape[0], " rows");
      }
      HashTensor(hasher, *u);
      HashTensor(hasher, *v);
      c.k = u->shape[1];
      c.u = ToFloats(*u);
      c.v = ToFloats(*v);
    }
    chain = crypto::ToHex(hasher.Finish());
    parsed.push_back(std::move(c));
  }

  if (update.rebase && parsed.empty() && update.to_version == 0) {
    return std::shared_ptr<const BaseOverlay>();  // The pristine base.
  }
  if (cache != nullptr) {
    if (std::shared_ptr<const BaseOverlay> shared = cache->Find(update.to_version, chain)) {
      return shared;
    }
  }

  // Start from the current weights (or pristine ones after a rebase); copy a module's weight
  // the first time a correction touches it, so `current` and the shared model stay untouched.
  std::vector<at::Tensor> weights(modules.size());
  if (!update.rebase && current != nullptr) {
    const std::span<const at::Tensor> from = current->weights();
    std::copy(from.begin(), from.end(), weights.begin());
  }
  std::vector<bool> owned(modules.size(), false);
  for (const ParsedCorrection& c : parsed) {
    at::Tensor& w = weights[c.module_index];
    if (!owned[c.module_index]) {
      const at::Tensor& source = w.defined() ? w : model.ModuleWeight(c.module_index);
      // Corrections are applied on the CPU in a fixed order (deterministic_apply.h), whatever
      // device the model is on, so every replica's weights stay bit-identical.
      w = source.detach().to(at::kCPU).to(at::kFloat).contiguous().clone();
      owned[c.module_index] = true;
    }
    const wire::ModuleInfo& m = modules[c.module_index];
    float* data = w.data_ptr<float>();
    const auto n = static_cast<std::size_t>(w.numel());
    if (c.dense) {
      for (std::size_t i = 0; i < n; ++i) {
        data[i] = static_cast<float>(static_cast<double>(data[i]) + c.d[i]);
      }
    } else {
      FEDLORA_RETURN_IF_ERROR(lora::AddProductDeterministic(std::span<float>(data, n), c.u, c.v,
                                                            m.d_out, m.d_in, c.k));
    }
  }
  if (!modules.empty() && !model.ModuleWeight(0).device().is_cpu()) {
    const at::Device device = model.ModuleWeight(0).device();
    for (std::size_t i = 0; i < weights.size(); ++i) {
      if (owned[i]) weights[i] = weights[i].to(device);
    }
  }
  auto overlay =
      std::make_shared<const BaseOverlay>(update.to_version, std::move(chain), std::move(weights));
  return cache != nullptr ? cache->Share(std::move(overlay)) : overlay;
} catch (const c10::Error& e) {
  return Internal("applying base update: ", e.what_without_backtrace());
}

}  // namespace fedlora::client
