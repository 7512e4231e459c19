#include "common/lora/adapter_layout.h"

#include <cmath>
#include <random>
#include <set>

#include "common/crypto/sha256.h"

namespace fedlora::lora {

std::string_view ShortName(std::string_view module) {
  const std::size_t dot = module.rfind('.');
  return dot == std::string_view::npos ? module : module.substr(dot + 1);
}

std::string LoraAName(std::string_view module) { return StrCat(module, ".lora_A.weight"); }
std::string LoraBName(std::string_view module) { return StrCat(module, ".lora_B.weight"); }

Result<std::vector<wire::ModuleInfo>> SelectTargets(std::span<const wire::ModuleInfo> available,
                                                    const wire::LoraSpec& spec) {
  if (spec.rank == 0) return InvalidArgument("lora.rank must be >= 1");
  if (spec.targets.empty()) return InvalidArgument("lora.targets is empty");
  std::set<std::string, std::less<>> short_names;
  for (const auto& m : available) short_names.insert(std::string(ShortName(m.name)));
  for (const std::string& t : spec.targets) {
    if (!short_names.contains(t)) {
      std::string valid;
      for (const auto& s : short_names) valid += (valid.empty() ? "" : ", ") + s;
      return InvalidArgument("lora.targets: no module named '", t, "' (valid: ", valid, ")");
    }
  }
  const std::set<std::string, std::less<>> wanted(spec.targets.begin(), spec.targets.end());
  std::vector<wire::ModuleInfo> out;
  for (const auto& m : available) {
    if (wanted.contains(ShortName(m.name))) out.push_back(m);
  }
  return out;
}

std::map<std::string, TensorSpec, std::less<>> AdapterSpecs(
    std::span<const wire::ModuleInfo> modules, std::uint32_t rank, DType dtype) {
  std::map<std::string, TensorSpec, std::less<>> out;
  const auto r = static_cast<std::int64_t>(rank);
  for (const auto& m : modules) {
    out[LoraAName(m.name)] = TensorSpec{dtype, {r, m.d_in}};
    out[LoraBName(m.name)] = TensorSpec{dtype, {m.d_out, r}};
  }
  return out;
}

TensorMap InitAdapter(std::span<const wire::ModuleInfo> modules, std::uint32_t rank,
                      std::uint64_t seed) {
  TensorMap out;
  const auto r = static_cast<std::int64_t>(rank);
  for (const auto& m : modules) {
    // Seed each module's stream from (seed, name) so adding a module leaves the others unchanged.
    const crypto::Digest d = crypto::Sha256(StrCat(seed, "/", m.name));
    std::uint64_t module_seed = 0;
    for (int i = 0; i < 8; ++i) module_seed = (module_seed << 8) | static_cast<std::uint8_t>(d[i]);
    std::mt19937_64 rng(module_seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(m.d_in));
    std::uniform_real_distribution<double> uniform(-bound, bound);
    std::vector<double> a(static_cast<std::size_t>(r * m.d_in));
    for (double& x : a) x = uniform(rng);
    out.emplace(LoraAName(m.name), FromDoubles(DType::kF32, {r, m.d_in}, a));
    out.emplace(LoraBName(m.name), Zeros(DType::kF32, {m.d_out, r}));
  }
  return out;
}

double Scale(const wire::LoraSpec& spec) {
  const double r = static_cast<double>(spec.rank);
  return spec.rslora ? spec.alpha / std::sqrt(r) : spec.alpha / r;
}

}  // namespace fedlora::lora
