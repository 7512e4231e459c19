#include "client/lora/lora_adapter.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>

#include "client/torch_bridge.h"

namespace fedlora::client {
namespace {

constexpr std::string_view kLoraASuffix = ".lora_A.weight";
constexpr std::string_view kLoraBSuffix = ".lora_B.weight";

std::string ValidTargetList() {
  std::string out;
  for (const std::string& name : LoraTargetNames()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

Status ValidateLoraSpec(const wire::LoraSpec& spec) {
  if (spec.rank == 0) return InvalidArgument("LoRA rank must be >= 1");
  if (!std::isfinite(spec.alpha) || spec.alpha <= 0.0) {
    return InvalidArgument("LoRA alpha ", spec.alpha, " must be finite and > 0");
  }
  if (!(spec.dropout >= 0.0 && spec.dropout < 1.0)) {
    return InvalidArgument("LoRA dropout ", spec.dropout, " must be in [0, 1)");
  }
  if (spec.targets.empty()) {
    return InvalidArgument("LoRA targets are empty (valid: ", ValidTargetList(), ")");
  }
  for (const std::string& target : spec.targets) {
    const auto& valid = LoraTargetNames();
    if (std::find(valid.begin(), valid.end(), target) == valid.end()) {
      return InvalidArgument("unknown LoRA target '", target, "' (valid: ", ValidTargetList(),
                             ")");
    }
  }
  return OkStatus();
}

}  // namespace

const std::vector<std::string>& LoraTargetNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (std::size_t k = 0; k < kModulesPerLayer; ++k) {
      v.emplace_back(ModuleShortName(ModuleKind(k)));
    }
    return v;
  }();
  return names;
}

Result<std::unique_ptr<LoraAdapter>> LoraAdapter::Create(const LlamaModel& model,
                                                         const wire::LoraSpec& spec,
                                                         std::uint64_t seed) try {
  FEDLORA_RETURN_IF_ERROR(ValidateLoraSpec(spec));
  const std::set<std::string, std::less<>> targets(spec.targets.begin(), spec.targets.end());
  std::unique_ptr<LoraAdapter> adapter(new LoraAdapter());
  adapter->rank_ = spec.rank;
  const double r = static_cast<double>(spec.rank);
  adapter->scale_ = spec.rslora ? spec.alpha / std::sqrt(r) : spec.alpha / r;
  adapter->dropout_ = spec.dropout;
  adapter->generator_ = at::make_generator<at::CPUGeneratorImpl>(seed);

  const std::vector<wire::ModuleInfo>& modules = model.AdaptableModules();
  adapter->slots_.resize(modules.size());
  const auto options = at::TensorOptions().dtype(at::kFloat);
  for (std::size_t i = 0; i < modules.size(); ++i) {
    if (!targets.contains(ModuleShortName(ModuleKind(i % kModulesPerLayer)))) continue;
    const wire::ModuleInfo& m = modules[i];
    auto f = std::make_unique<Factors>();
    f->module = m.name;
    // PEFT: kaiming_uniform_(a=√5) on A; its bound sqrt(6 / ((1 + a²) fan_in)) is 1/√d_in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(m.d_in));
    f->a = at::empty({spec.rank, m.d_in}, options).uniform_(-bound, bound, adapter->generator_);
    f->b = at::zeros({m.d_out, static_cast<std::int64_t>(spec.rank)}, options);
    f->a.set_requires_grad(true);
    f->b.set_requires_grad(true);
    adapter->slots_[i] = std::move(f);
  }
  return adapter;
} catch (const c10::Error& e) {
  return Internal("creating LoRA adapter: ", e.what_without_backtrace());
}

void LoraAdapter::SetSeed(std::uint64_t seed) {
  std::lock_guard<std::mutex> lock(generator_.mutex());
  generator_.set_current_seed(seed);
}

const LoraAdapter::Factors* LoraAdapter::Find(std::string_view module) const {
  for (const auto& slot : slots_) {
    if (slot && slot->module == module) return slot.get();
  }
  return nullptr;
}

std::vector<std::string> LoraAdapter::ModuleNames() const {
  std::vector<std::string> names;
  for (const auto& slot : slots_) {
    if (slot) names.push_back(slot->module);
  }
  return names;
}

Status LoraAdapter::Load(const TensorMap& tensors) try {
  // Convert and check everything first, so a bad map leaves the adapter untouched.
  std::map<std::string, at::Tensor, std::less<>> incoming;
  for (const auto& [name, wire] : tensors) {
    const std::string_view n = name;
    const bool is_a = n.ends_with(kLoraASuffix), is_b = n.ends_with(kLoraBSuffix);
    const Factors* f = nullptr;
    if (is_a || is_b) f = Find(n.substr(0, n.size() - kLoraASuffix.size()));
    if (f == nullptr) {
      return InvalidArgument("unknown adapter tensor '", name, "' (this adapter has rank-",
                             rank_, " factors for ", ModuleNames().size(),
                             " modules, named <module>.lora_A.weight / .lora_B.weight)");
    }
    Result<at::Tensor> t = FromWireAsFloat(wire);
    if (!t.ok()) return t.status().WithContext(StrCat("adapter tensor '", name, "'"));
    const at::Tensor& expected = is_a ? f->a : f->b;
    if (!t->sizes().equals(expected.sizes())) {
      return InvalidArgument("adapter tensor '", name, "' has shape ", ShapeString(wire.shape),
                             ", expected ", ShapeString(expected.sizes().vec()));
    }
    if (!AllFinite(wire)) {
      return InvalidArgument("adapter tensor '", name, "' holds NaN or infinity");
    }
    incoming.emplace(name, std::move(t).value());
  }
  for (const auto& slot : slots_) {
    if (!slot) continue;
    for (std::string_view suffix : {kLoraASuffix, kLoraBSuffix}) {
      const std::string name = StrCat(slot->module, suffix);
      if (!incoming.contains(name)) return InvalidArgument("missing adapter tensor '", name, "'");
    }
  }
  at::NoGradGuard no_grad;  // In-place writes into leaves that require grad.
  for (const auto& slot : slots_) {
    if (!slot) continue;
    slot->a.copy_(incoming.find(StrCat(slot->module, kLoraASuffix))->second);
    slot->b.copy_(incoming.find(StrCat(slot->module, kLoraBSuffix))->second);
  }
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("loading LoRA adapter: ", e.what_without_backtrace());
}

Result<TensorMap> LoraAdapter::Export(DType dtype) const {
  TensorMap out;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    FEDLORA_ASSIGN_OR_RETURN(out[StrCat(slot->module, kLoraASuffix)], ToWire(slot->a, dtype));
    FEDLORA_ASSIGN_OR_RETURN(out[StrCat(slot->module, kLoraBSuffix)], ToWire(slot->b, dtype));
  }
  return out;
}

std::vector<at::Tensor> LoraAdapter::Parameters() const {
  std::vector<at::Tensor> params;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    params.push_back(slot->a);
    params.push_back(slot->b);
  }
  return params;
}

at::Tensor LoraAdapter::MergedWeight(const LlamaModel& model, std::string_view module) const {
  const Factors* f = Find(module);
  const at::Tensor w = model.Weight(StrCat(module, ".weight"));
  if (f == nullptr || !w.defined()) return at::Tensor();
  at::NoGradGuard no_grad;
  return w + at::matmul(f->b, f->a) * scale_;
}

at::Tensor LoraAdapter::Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) {
  TORCH_CHECK(module_index < slots_.size(), "LoRA adapter made for a model with ", slots_.size(),
              " adaptable modules was asked for module ", module_index);
  const Factors* f = slots_[module_index].get();
  if (f == nullptr) return base;
  at::Tensor in = x;
  if (training_ && dropout_ > 0.0) {
    // Inverted dropout on the adapter path only, with this adapter's generator.
    const at::Tensor keep = at::empty_like(x).bernoulli_(1.0 - dropout_, generator_);
    in = x * keep * (1.0 / (1.0 - dropout_));
  }
  return base + at::linear(at::linear(in, f->a), f->b) * scale_;
}

}  // namespace fedlora::client
