#include "client/lora/lora_adapter.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
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
constexpr std::string_view kLoraRSuffix = ".lora_R.weight";

std::string_view SuffixOf(LoraFactor factor) {
  switch (factor) {
    case LoraFactor::kA: return kLoraASuffix;
    case LoraFactor::kB: return kLoraBSuffix;
    case LoraFactor::kR: return kLoraRSuffix;
  }
  return kLoraASuffix;
}

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

bool IsFinite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

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

std::string LoraTensorName(std::string_view module, LoraFactor factor) {
  return StrCat(module, SuffixOf(factor));
}

Result<std::unique_ptr<LoraAdapter>> LoraAdapter::Create(const LlamaModel& model,
                                                         const wire::LoraSpec& spec,
                                                         std::uint64_t seed) {
  FEDLORA_RETURN_IF_ERROR(ValidateLoraSpec(spec));
  const std::set<std::string, std::less<>> targets(spec.targets.begin(), spec.targets.end());
  const double r = static_cast<double>(spec.rank);
  const double scale = spec.rslora ? spec.alpha / std::sqrt(r) : spec.alpha / r;
  std::vector<LoraModuleSpec> modules;
  const std::vector<wire::ModuleInfo>& all = model.AdaptableModules();
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!targets.contains(ModuleShortName(ModuleKind(i % kModulesPerLayer)))) continue;
    modules.push_back({all[i].name, static_cast<std::int64_t>(spec.rank), scale});
  }
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter,
                           Create(model, modules, {.dropout = spec.dropout}, seed));
  adapter->rank_ = spec.rank;
  adapter->scale_ = scale;
  return adapter;
}

Result<std::unique_ptr<LoraAdapter>> LoraAdapter::Create(const LlamaModel& model,
                                                         std::span<const LoraModuleSpec> modules,
                                                         const LoraOptions& options,
                                                         std::uint64_t seed) try {
  if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
    return InvalidArgument("LoRA dropout ", options.dropout, " must be in [0, 1)");
  }
  const std::vector<wire::ModuleInfo>& all = model.AdaptableModules();
  std::vector<const LoraModuleSpec*> by_index(all.size(), nullptr);
  for (const LoraModuleSpec& m : modules) {
    const std::ptrdiff_t index = model.ModuleIndex(m.module);
    if (index < 0) return InvalidArgument("unknown module '", m.module, "' for a LoRA adapter");
    if (by_index[static_cast<std::size_t>(index)] != nullptr) {
      return InvalidArgument("module '", m.module, "' is listed twice");
    }
    if (m.rank < 1) return InvalidArgument("module '", m.module, "': LoRA rank ", m.rank, " < 1");
    if (!std::isfinite(m.scale)) {
      return InvalidArgument("module '", m.module, "': LoRA scale ", m.scale, " is not finite");
    }
    by_index[static_cast<std::size_t>(index)] = &m;
  }

  std::unique_ptr<LoraAdapter> adapter(new LoraAdapter());
  adapter->dropout_ = options.dropout;
  adapter->latent_ = options.latent;
  adapter->generator_ = at::make_generator<at::CPUGeneratorImpl>(seed);
  adapter->slots_.resize(all.size());
  const auto float32 = at::TensorOptions().dtype(at::kFloat);
  // Factors live where the model's weights do; the draws happen on the CPU generator first, so
  // an adapter starts bit-identical on every device.
  const at::Device device = all.empty() ? at::Device(at::kCPU) : model.ModuleWeight(0).device();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const LoraModuleSpec* spec = by_index[i];
    if (spec == nullptr) continue;
    const wire::ModuleInfo& m = all[i];
    auto f = std::make_unique<Factors>();
    f->module = m.name;
    f->rank = spec->rank;
    f->scale = spec->scale;
    // PEFT: kaiming_uniform_(a=√5) on A; its bound sqrt(6 / ((1 + a²) fan_in)) is 1/√d_in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(m.d_in));
    f->a = at::empty({spec->rank, m.d_in}, float32)
               .uniform_(-bound, bound, adapter->generator_)
               .to(device);
    f->b = at::zeros({m.d_out, spec->rank}, float32.device(device));
    if (options.latent) {
      f->r = at::zeros({spec->rank, spec->rank}, float32.device(device));
      f->r.set_requires_grad(true);
    } else {
      f->a.set_requires_grad(options.train_a);
      f->b.set_requires_grad(options.train_b);
    }
    if (adapter->rank_ == 0) {
      adapter->rank_ = static_cast<std::uint32_t>(spec->rank);
      adapter->scale_ = spec->scale;
    }
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

LoraAdapter::Factors* LoraAdapter::Find(std::string_view module) {
  for (const auto& slot : slots_) {
    if (slot && slot->module == module) return slot.get();
  }
  return nullptr;
}

at::Tensor& LoraAdapter::FactorRef(Factors& f, LoraFactor factor) {
  switch (factor) {
    case LoraFactor::kA: return f.a;
    case LoraFactor::kB: return f.b;
    case LoraFactor::kR: return f.r;
  }
  return f.a;
}

std::vector<std::string> LoraAdapter::ModuleNames() const {
  std::vector<std::string> names;
  for (const auto& slot : slots_) {
    if (slot) names.push_back(slot->module);
  }
  return names;
}

std::int64_t LoraAdapter::ModuleRank(std::string_view module) const {
  const Factors* f = Find(module);
  return f == nullptr ? 0 : f->rank;
}

double LoraAdapter::ModuleScale(std::string_view module) const {
  const Factors* f = Find(module);
  return f == nullptr ? 0.0 : f->scale;
}

Status LoraAdapter::Load(const TensorMap& tensors) try {
  // Convert and check everything first, so a bad map leaves the adapter untouched.
  std::map<std::string, at::Tensor, std::less<>> incoming;
  for (const auto& [name, wire] : tensors) {
    const std::string_view n = name;
    const bool is_a = n.ends_with(kLoraASuffix), is_b = n.ends_with(kLoraBSuffix);
    const bool is_r = latent_ && n.ends_with(kLoraRSuffix);
    const Factors* f = nullptr;
    if (is_a || is_b || is_r) f = Find(n.substr(0, n.size() - kLoraASuffix.size()));
    if (f == nullptr) {
      return InvalidArgument("unknown adapter tensor '", name, "' (this adapter has factors for ",
                             ModuleNames().size(), " modules, named <module>.lora_A.weight / ",
                             ".lora_B.weight", latent_ ? " / .lora_R.weight" : "", ")");
    }
    Result<at::Tensor> t = FromWireAsFloat(wire);
    if (!t.ok()) return t.status().WithContext(StrCat("adapter tensor '", name, "'"));
    const at::Tensor& expected = is_a ? f->a : is_b ? f->b : f->r;
    if (!t->sizes().equals(expected.sizes())) {
      return InvalidArgument("adapter tensor '", name, "' has shape ", ShapeString(wire.shape),
                             ", expected ", ShapeString(expected.sizes().vec()));
    }
    if (!AllFinite(wire)) {
      return InvalidArgument("adapter tensor '", name, "' holds NaN or infinity");
    }
    incoming.emplace(name, std::move(t).value());
  }
  std::vector<LoraFactor> factors = {LoraFactor::kA, LoraFactor::kB};
  if (latent_) factors.push_back(LoraFactor::kR);
  for (const auto& slot : slots_) {
    if (!slot) continue;
    for (LoraFactor factor : factors) {
      const std::string name = LoraTensorName(slot->module, factor);
      if (!incoming.contains(name)) return InvalidArgument("missing adapter tensor '", name, "'");
    }
  }
  at::NoGradGuard no_grad;  // In-place writes into leaves that may require grad.
  for (const auto& slot : slots_) {
    if (!slot) continue;
    for (LoraFactor factor : factors) {
      FactorRef(*slot, factor).copy_(incoming.find(LoraTensorName(slot->module, factor))->second);
    }
  }
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("loading LoRA adapter: ", e.what_without_backtrace());
}

Status LoraAdapter::SetFactor(std::string_view module, LoraFactor factor,
                              const at::Tensor& value) try {
  const std::string name = LoraTensorName(module, factor);
  Factors* f = Find(module);
  if (f == nullptr || (factor == LoraFactor::kR && !latent_)) {
    return InvalidArgument("unknown adapter tensor '", name, "'");
  }
  at::Tensor& target = FactorRef(*f, factor);
  if (!value.defined() || !value.sizes().equals(target.sizes())) {
    return InvalidArgument("adapter tensor '", name, "' has shape ",
                           value.defined() ? ShapeString(value.sizes().vec()) : "undefined",
                           ", expected ", ShapeString(target.sizes().vec()));
  }
  const at::Tensor converted = value.detach().to(at::kFloat);
  if (!IsFinite(converted)) {
    return InvalidArgument("adapter tensor '", name, "' holds NaN or infinity");
  }
  at::NoGradGuard no_grad;
  target.copy_(converted);
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("setting LoRA factor: ", e.what_without_backtrace());
}

at::Tensor LoraAdapter::Factor(std::string_view module, LoraFactor factor) const {
  const Factors* f = Find(module);
  if (f == nullptr) return at::Tensor();
  const at::Tensor& t = factor == LoraFactor::kA ? f->a : factor == LoraFactor::kB ? f->b : f->r;
  return t.defined() ? t.detach().clone() : at::Tensor();
}

Result<TensorMap> LoraAdapter::Export(DType dtype) const {
  return Export(dtype, LoraExportOptions{});
}

Result<TensorMap> LoraAdapter::Export(DType dtype, const LoraExportOptions& options) const try {
  for (const auto& [module, rank] : options.ranks) {
    const Factors* f = Find(module);
    if (f == nullptr) return InvalidArgument("cannot truncate '", module, "': not adapted");
    if (rank < 1 || rank > f->rank) {
      return InvalidArgument("cannot truncate '", module, "' of rank ", f->rank, " to rank ",
                             rank);
    }
  }
  TensorMap out;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    const auto it = options.ranks.find(slot->module);
    const std::int64_t keep = it == options.ranks.end() ? slot->rank : it->second;
    if (options.a) {
      FEDLORA_ASSIGN_OR_RETURN(out[LoraTensorName(slot->module, LoraFactor::kA)],
                               ToWire(slot->a.narrow(0, 0, keep), dtype));
    }
    if (options.b) {
      FEDLORA_ASSIGN_OR_RETURN(out[LoraTensorName(slot->module, LoraFactor::kB)],
                               ToWire(slot->b.narrow(1, 0, keep), dtype));
    }
    if (options.r && latent_) {
      FEDLORA_ASSIGN_OR_RETURN(out[LoraTensorName(slot->module, LoraFactor::kR)],
                               ToWire(slot->r, dtype));
    }
  }
  return out;
} catch (const c10::Error& e) {
  return Internal("exporting LoRA adapter: ", e.what_without_backtrace());
}

std::vector<at::Tensor> LoraAdapter::Parameters() const {
  std::vector<at::Tensor> params;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    for (const at::Tensor* t : {&slot->a, &slot->b, &slot->r}) {
      if (t->defined() && t->requires_grad()) params.push_back(*t);
    }
  }
  return params;
}

at::Tensor LoraAdapter::MergedWeight(const LlamaModel& model, std::string_view module,
                                     const at::Tensor& base) const {
  const Factors* f = Find(module);
  const at::Tensor w = base.defined() ? base : model.Weight(StrCat(module, ".weight"));
  if (f == nullptr || !w.defined()) return at::Tensor();
  at::NoGradGuard no_grad;
  const at::Tensor product =
      latent_ ? at::matmul(at::matmul(f->b, f->r), f->a) : at::matmul(f->b, f->a);
  return w + product * f->scale;
}

Status LoraAdapter::SetTailPenalty(double gamma, double lambda) {
  if (latent_) return InvalidArgument("rank pruning does not apply to LoRA-SB adapters");
  if (!(gamma >= 0.0 && gamma <= 1.0)) {
    return InvalidArgument("rank pruning gamma ", gamma, " must be in [0, 1]");
  }
  if (!std::isfinite(lambda) || lambda < 0.0) {
    return InvalidArgument("rank pruning lambda ", lambda, " must be finite and >= 0");
  }
  tail_lambda_ = lambda;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    const auto t = static_cast<std::int64_t>(std::floor(gamma * static_cast<double>(slot->rank)));
    slot->tail = t < slot->rank ? t : -1;
  }
  return OkStatus();
}

at::Tensor LoraAdapter::Penalty() const {
  if (tail_lambda_ == 0.0) return at::Tensor();
  at::Tensor total;
  for (const auto& slot : slots_) {
    if (!slot || slot->tail < 0) continue;
    const std::int64_t n = slot->rank - slot->tail;
    const at::Tensor term = slot->b.narrow(1, slot->tail, n).norm() *
                            slot->a.narrow(0, slot->tail, n).norm();
    total = total.defined() ? total + term : term;
  }
  return total.defined() ? total * tail_lambda_ : total;
}

std::map<std::string, double, std::less<>> LoraAdapter::TailScores() const {
  at::NoGradGuard no_grad;
  std::map<std::string, double, std::less<>> scores;
  for (const auto& slot : slots_) {
    if (!slot || slot->tail < 0) continue;
    const std::int64_t n = slot->rank - slot->tail;
    // In double, so a decrease is not an artefact of float rounding.
    const double b = slot->b.narrow(1, slot->tail, n).to(at::kDouble).norm().item<double>();
    const double a = slot->a.narrow(0, slot->tail, n).to(at::kDouble).norm().item<double>();
    scores.emplace(slot->module, a * b);
  }
  return scores;
}

std::int64_t LoraAdapter::TailStart(std::string_view module) const {
  const Factors* f = Find(module);
  return f == nullptr ? -1 : f->tail;
}

at::Tensor LoraAdapter::Adapt(std::size_t module_index, const at::Tensor& x, at::Tensor base) {
  TORCH_CHECK(module_index < slots_.size(), "LoRA adapter made for a model with ", slots_.size(),
              " adaptable modules was asked for module ", module_index);
  const Factors* f = slots_[module_index].get();
  if (f == nullptr) return base;
  at::Tensor h = at::linear(AdapterInput(x), f->a);
  if (latent_) h = at::linear(h, f->r);
  return base + at::linear(h, f->b) * f->scale;
}

at::Tensor LoraAdapter::AdapterInput(const at::Tensor& x) {
  if (!training_ || dropout_ == 0.0) return x;
  // Inverted dropout on the adapter path only, with this adapter's generator.
  // The mask is drawn on the CPU (the generator is a CPU one) and moved to x's device.
  const at::Tensor keep = at::empty(x.sizes(), x.options().device(at::kCPU))
                              .bernoulli_(1.0 - dropout_, generator_)
                              .to(x.device());
  return x * keep * (1.0 / (1.0 - dropout_));
}

std::optional<LoraAdapter::PlainFactors> LoraAdapter::Plain(std::size_t module_index) const {
  if (module_index >= slots_.size() || slots_[module_index] == nullptr || latent_ ||
      (training_ && dropout_ > 0.0)) {
    return std::nullopt;
  }
  const Factors& f = *slots_[module_index];
  return PlainFactors{f.a, f.b, f.scale};
}

std::optional<LoraAdapter::SlotFactors> LoraAdapter::Slot(std::size_t module_index) const {
  if (module_index >= slots_.size() || slots_[module_index] == nullptr) return std::nullopt;
  const Factors& f = *slots_[module_index];
  return SlotFactors{f.a, f.b, f.r, f.scale};
}

}  // namespace fedlora::client
