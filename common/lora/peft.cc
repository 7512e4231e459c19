// peft.cc — PEFT adapters on disk, both directions: adapter_config.json (the subset we can
// honour, every other feature refused by name) and adapter_model.safetensors, import with
// validation, export with an atomic directory replace. Longer than ~600 lines because reading
// and writing share the config schema, the name mapping and the checks; one file keeps the two
// directions from drifting apart.
#include "common/lora/peft.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>

#include "common/fs.h"
#include "common/lora/adapter_layout.h"
#include "common/safetensors.h"

namespace fedlora::lora {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kA = ".lora_A.weight";
constexpr std::string_view kB = ".lora_B.weight";
constexpr std::string_view kR = ".lora_R.weight";
constexpr std::string_view kADefault = ".lora_A.default.weight";
constexpr std::string_view kBDefault = ".lora_B.default.weight";

std::string Join(const std::string& dir, std::string_view file) {
  return (std::filesystem::path(dir) / file).string();
}

Tensor As(const Tensor& t, DType dtype) {
  return t.dtype == dtype ? t : FromDoubles(dtype, t.shape, ToDoubles(t));
}

// x (n x k) times y (k x m), row-major, accumulated in f64 in index order.
std::vector<double> MatMul(std::span<const double> x, std::span<const double> y, std::int64_t n,
                           std::int64_t k, std::int64_t m) {
  std::vector<double> out(static_cast<std::size_t>(n * m), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t p = 0; p < k; ++p) {
      const double xv = x[i * k + p];
      for (std::int64_t j = 0; j < m; ++j) out[i * m + j] += xv * y[p * m + j];
    }
  }
  return out;
}

Status CheckMatrix(const Tensor& t, std::string_view what) {
  FEDLORA_RETURN_IF_ERROR(Validate(t, what));
  if (t.shape.size() != 2) {
    return InvalidArgument(what, " must be a matrix, not ", ShapeString(t.shape));
  }
  return OkStatus();
}

// A JSON number: an integer when `v` is one (PEFT's configs hold ints for ranks and most alphas).
json Number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9007199254740992.0) {
    return json(static_cast<std::int64_t>(v));
  }
  return json(v);
}

std::vector<std::string> TargetsOf(const PeftAdapter& p) {
  std::set<std::string> names(p.target_modules.begin(), p.target_modules.end());
  for (const auto& [module, f] : p.modules) names.insert(std::string(ShortName(module)));
  return {names.begin(), names.end()};
}

// PEFT's target_modules rule for a list: an exact match or a "." + suffix match.
bool Targeted(std::string_view module, std::span<const std::string> targets) {
  for (const std::string& t : targets) {
    if (module == t || (module.size() > t.size() && module.ends_with(t) &&
                        module[module.size() - t.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

Status ValidateAdapter(const PeftAdapter& p) {
  if (p.modules.empty()) return InvalidArgument("the PEFT adapter has no modules to export");
  if (p.r == 0) return InvalidArgument("PEFT adapter: r must be >= 1");
  if (!(p.lora_alpha > 0) || !std::isfinite(p.lora_alpha)) {
    return InvalidArgument("PEFT adapter: lora_alpha ", p.lora_alpha, " must be finite and > 0");
  }
  if (!(p.lora_dropout >= 0 && p.lora_dropout < 1)) {
    return InvalidArgument("PEFT adapter: lora_dropout ", p.lora_dropout, " must be in [0, 1)");
  }
  for (const auto& [module, rank] : p.rank_pattern) {
    if (!p.modules.contains(module) || rank == 0) {
      return InvalidArgument("PEFT adapter: rank_pattern entry '", module, "' = ", rank,
                             " names no module of the adapter or is 0");
    }
  }
  for (const auto& [module, alpha] : p.alpha_pattern) {
    if (!p.modules.contains(module) || !(alpha > 0) || !std::isfinite(alpha)) {
      return InvalidArgument("PEFT adapter: alpha_pattern entry '", module, "' = ", alpha,
                             " names no module of the adapter or is not finite and > 0");
    }
  }
  for (const auto& [module, f] : p.modules) {
    FEDLORA_RETURN_IF_ERROR(CheckMatrix(f.a, StrCat("lora_A of '", module, "'")));
    FEDLORA_RETURN_IF_ERROR(CheckMatrix(f.b, StrCat("lora_B of '", module, "'")));
    const std::int64_t r = p.RankOf(module);
    if (f.a.shape[0] != r || f.b.shape[1] != r) {
      return InvalidArgument("PEFT adapter: module '", module, "' has lora_A ",
                             ShapeString(f.a.shape), " and lora_B ", ShapeString(f.b.shape),
                             " but its rank is ", r, " (r or rank_pattern)");
    }
  }
  return OkStatus();
}

// ---- reading adapter_config.json ------------------------------------------------------------

// Typed access to the config object; every error names the file and the key.
class ConfigReader {
 public:
  ConfigReader(const ordered_json& j, std::string path) : j_(j), path_(std::move(path)) {}

  const ordered_json* Find(std::string_view key) const {
    const auto it = j_.find(std::string(key));
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  Status Bad(std::string_view key, std::string_view expected) const {
    return InvalidArgument(path_, ": key '", key, "' must be ", expected, ", not ",
                           j_.at(std::string(key)).dump());
  }
  Status Bool(std::string_view key, bool* out) const {
    const ordered_json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_boolean()) return Bad(key, "true or false");
    *out = v->get<bool>();
    return OkStatus();
  }
  Status Positive(std::string_view key, double* out) const {
    const ordered_json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_number() || !(v->get<double>() > 0) || !std::isfinite(v->get<double>())) {
      return Bad(key, "a positive number");
    }
    *out = v->get<double>();
    return OkStatus();
  }
  Status Rank(std::string_view key, const ordered_json& v, std::uint32_t* out) const {
    const double d = v.is_number() ? v.get<double>() : -1;
    if (!(d >= 1 && d <= 1e9 && d == std::floor(d))) {
      return InvalidArgument(path_, ": key '", key, "' must be a positive integer rank, not ",
                             v.dump());
    }
    *out = static_cast<std::uint32_t>(d);
    return OkStatus();
  }
  // Keys whose presence (true, or a non-empty value) means a feature we do not implement.
  Status Refuse(std::string_view key, std::string_view feature) const {
    const ordered_json* v = Find(key);
    if (v == nullptr || (v->is_boolean() && !v->get<bool>()) ||
        ((v->is_array() || v->is_object()) && v->empty())) {
      return OkStatus();
    }
    return Unimplemented(path_, ": key '", key, "' = ", v->dump(), ": ", feature,
                         " is not supported (plain LoRA adapters only)");
  }
  const std::string& path() const { return path_; }

 private:
  const ordered_json& j_;
  std::string path_;
};

// The value of the first key of `pattern` (in file order) that matches `module` the way PEFT's
// get_pattern_key does: re.match(rf"(.*\.)?({key})$", module). Keys that are not valid regular
// expressions match only themselves.
const ordered_json* MatchPattern(const ordered_json& pattern, const std::string& module) {
  for (auto it = pattern.begin(); it != pattern.end(); ++it) {
    const std::string& key = it.key();
    if (key == module) return &it.value();
    try {
      const std::regex re("(.*\\.)?(" + key + ")$");
      if (std::regex_match(module, re)) return &it.value();
    } catch (const std::regex_error&) {
      // Not a regular expression std::regex accepts: the exact comparison above decided.
    }
  }
  return nullptr;
}

Status CheckFeatures(const ConfigReader& c) {
  FEDLORA_RETURN_IF_ERROR(c.Refuse("use_dora", "DoRA"));
  if (const ordered_json* bias = c.Find("bias");
      bias != nullptr && !(bias->is_string() && bias->get<std::string>() == "none")) {
    return Unimplemented(c.path(), ": key 'bias' = ", bias->dump(),
                         ": trained biases are not supported (only \"none\")");
  }
  FEDLORA_RETURN_IF_ERROR(c.Refuse("lora_bias", "a bias on lora_B"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("modules_to_save", "fully trained extra modules"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("fan_in_fan_out", "the transposed (Conv1D) layout"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("use_qalora", "QA-LoRA input pooling"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("alora_invocation_tokens", "activated LoRA (aLoRA)"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("target_parameters", "LoRA on bare parameters"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("layer_replication", "layer replication"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("trainable_token_indices", "trainable tokens"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("use_bdlora", "block-diagonal LoRA"));
  FEDLORA_RETURN_IF_ERROR(c.Refuse("arrow_config", "Arrow routing"));
  if (const ordered_json* init = c.Find("init_lora_weights");
      init != nullptr && init->is_string()) {
    const std::string s = init->get<std::string>();
    if (s.starts_with("pissa") || s == "olora" || s == "corda" || s == "loftq") {
      return Unimplemented(c.path(), ": key 'init_lora_weights' = \"", s,
                           "\": this initialisation changes the base weights, so the adapter "
                           "is not relative to the pristine base (convert it in PEFT first)");
    }
  }
  return OkStatus();
}

// ---- writing a directory atomically ---------------------------------------------------------

Status Errno(std::string_view what, const std::string& path) {
  return fs::ErrnoStatus(errno, what, path);
}

// Replaces directory `final_path` (which may not exist) by `staging`, atomically where the file
// system can exchange two names, and removes the old contents.
Status ReplaceDirectory(const std::string& staging, const std::string& final_path,
                        const std::string& parent) {
  FEDLORA_RETURN_IF_ERROR(fs::FsyncDirectory(staging));
  std::error_code ec;
  if (!std::filesystem::exists(final_path, ec)) return fs::CommitDirectory(staging, final_path);
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) == 0) {
    FEDLORA_RETURN_IF_ERROR(fs::FsyncDirectory(parent));
    return fs::RemoveAll(staging);  // Now holds the previous adapter.
  }
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
    return Errno("exchange with", final_path);
  }
  // No RENAME_EXCHANGE here: move the old directory aside first (a reader may briefly miss it).
  const std::string aside = staging + ".old";
  FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(aside));
  if (::rename(final_path.c_str(), aside.c_str()) != 0) return Errno("rename", final_path);
  if (::rename(staging.c_str(), final_path.c_str()) != 0) return Errno("rename to", final_path);
  FEDLORA_RETURN_IF_ERROR(fs::FsyncDirectory(parent));
  return fs::RemoveAll(aside);
}

}  // namespace

// ---- PeftAdapter ----------------------------------------------------------------------------

std::uint32_t PeftAdapter::RankOf(std::string_view module) const {
  const auto it = rank_pattern.find(module);
  return it == rank_pattern.end() ? r : it->second;
}

double PeftAdapter::AlphaOf(std::string_view module) const {
  const auto it = alpha_pattern.find(module);
  return it == alpha_pattern.end() ? lora_alpha : it->second;
}

double PeftAdapter::ScaleOf(std::string_view module) const {
  const double r_m = static_cast<double>(RankOf(module));
  return use_rslora ? AlphaOf(module) / std::sqrt(r_m) : AlphaOf(module) / r_m;
}

// ---- corrections ----------------------------------------------------------------------------

Result<PeftCorrection> DenseAsFactors(const Tensor& dense) {
  FEDLORA_RETURN_IF_ERROR(CheckMatrix(dense, "dense correction"));
  const std::int64_t d_out = dense.shape[0], d_in = dense.shape[1];
  const std::int64_t k = std::min(d_out, d_in);
  std::vector<double> eye(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) eye[i * k + i] = 1.0;
  const Tensor identity = FromDoubles(dense.dtype, {k, k}, eye);
  if (d_out <= d_in) return PeftCorrection{identity, dense};
  return PeftCorrection{dense, identity};
}

Result<PeftCorrection> StackCorrections(std::span<const PeftCorrection> parts,
                                        std::string_view module) {
  if (parts.empty()) return InvalidArgument("no corrections to stack for '", module, "'");
  std::int64_t d_out = -1, d_in = -1, k_total = 0;
  for (const PeftCorrection& c : parts) {
    FEDLORA_RETURN_IF_ERROR(CheckMatrix(c.u, StrCat("correction U of '", module, "'")));
    FEDLORA_RETURN_IF_ERROR(CheckMatrix(c.v, StrCat("correction V of '", module, "'")));
    if (c.u.shape[1] != c.v.shape[0] || (d_out >= 0 && c.u.shape[0] != d_out) ||
        (d_in >= 0 && c.v.shape[1] != d_in)) {
      return InvalidArgument("corrections of '", module, "' disagree: U ", ShapeString(c.u.shape),
                             ", V ", ShapeString(c.v.shape), " after d_out ", d_out, ", d_in ",
                             d_in);
    }
    d_out = c.u.shape[0];
    d_in = c.v.shape[1];
    k_total += c.u.shape[1];
  }
  std::vector<double> u(static_cast<std::size_t>(d_out * k_total));
  std::vector<double> v;
  v.reserve(static_cast<std::size_t>(k_total * d_in));
  std::int64_t col = 0;
  for (const PeftCorrection& c : parts) {
    const std::int64_t k = c.u.shape[1];
    const std::vector<double> uv = ToDoubles(c.u), vv = ToDoubles(c.v);
    for (std::int64_t i = 0; i < d_out; ++i) {
      for (std::int64_t j = 0; j < k; ++j) u[i * k_total + col + j] = uv[i * k + j];
    }
    v.insert(v.end(), vv.begin(), vv.end());
    col += k;
  }
  return PeftCorrection{FromDoubles(DType::kF64, {d_out, k_total}, u),
                        FromDoubles(DType::kF64, {k_total, d_in}, v)};
}

// ---- conversions ----------------------------------------------------------------------------

Result<PeftAdapter> PeftFromAdapter(const TensorMap& adapter, const wire::LoraSpec& spec,
                                    const std::string& base_model_name_or_path, DType dtype) {
  if (spec.rank == 0) return InvalidArgument("lora.rank must be >= 1");
  if (!(spec.alpha > 0)) return InvalidArgument("lora.alpha must be > 0");
  struct Parts {
    const Tensor* a = nullptr;
    const Tensor* b = nullptr;
    const Tensor* r = nullptr;
  };
  std::map<std::string, Parts, std::less<>> parts;
  for (const auto& [name, t] : adapter) {
    const std::string_view n = name;
    const std::string_view suffix = n.ends_with(kA)   ? kA
                                    : n.ends_with(kB) ? kB
                                    : n.ends_with(kR) ? kR
                                                      : std::string_view();
    if (suffix.empty()) {
      return InvalidArgument("adapter tensor '", name,
                             "' is not a LoRA factor (expected "
                             "<module>.lora_A.weight, .lora_B.weight or .lora_R.weight)");
    }
    FEDLORA_RETURN_IF_ERROR(CheckMatrix(t, StrCat("adapter tensor '", name, "'")));
    Parts& p = parts[std::string(n.substr(0, n.size() - suffix.size()))];
    (suffix == kA ? p.a : suffix == kB ? p.b : p.r) = &t;
  }
  const double s = Scale(spec);
  PeftAdapter out;
  out.r = spec.rank;
  out.lora_alpha = spec.alpha;
  out.use_rslora = spec.rslora;
  out.lora_dropout = spec.dropout;
  out.base_model_name_or_path = base_model_name_or_path;
  for (const auto& [module, p] : parts) {
    if (p.a == nullptr || p.b == nullptr) {
      return InvalidArgument("adapter tensor '",
                             p.a != nullptr   ? LoraAName(module)
                             : p.b != nullptr ? LoraBName(module)
                                              : module + std::string(kR),
                             "' has no matching ", p.a == nullptr ? "lora_A" : "lora_B");
    }
    const std::int64_t rank = p.a->shape[0], d_out = p.b->shape[0];
    const std::int64_t inner = p.r != nullptr ? p.r->shape[0] : rank;
    if (rank == 0 || p.b->shape[1] != inner || (p.r != nullptr && p.r->shape[1] != rank)) {
      return InvalidArgument("module '", module, "': lora_A ", ShapeString(p.a->shape), ", lora_B ",
                             ShapeString(p.b->shape),
                             p.r != nullptr ? StrCat(", lora_R ", ShapeString(p.r->shape)) : "",
                             " do not chain (B is d_out x r, ", p.r != nullptr ? "R r x r, " : "",
                             "A r x d_in, r >= 1)");
    }
    PeftFactors f;
    f.a = As(*p.a, dtype);
    f.b = p.r == nullptr
              ? As(*p.b, dtype)
              : FromDoubles(dtype, {d_out, rank},
                            MatMul(ToDoubles(*p.b), ToDoubles(*p.r), d_out, inner, rank));
    out.modules.emplace(module, std::move(f));
    if (static_cast<std::uint32_t>(rank) != spec.rank) {
      // Keep the scale s that our clients use at every rank: alpha_m / r_m = s.
      out.rank_pattern[module] = static_cast<std::uint32_t>(rank);
      const double r_m = static_cast<double>(rank);
      const double alpha = spec.rslora ? s * std::sqrt(r_m) : s * r_m;
      if (alpha != spec.alpha) out.alpha_pattern[module] = alpha;
    }
  }
  std::set<std::string> targets(spec.targets.begin(), spec.targets.end());
  for (const auto& [module, f] : out.modules) targets.insert(std::string(ShortName(module)));
  out.target_modules.assign(targets.begin(), targets.end());
  if (out.modules.empty()) return InvalidArgument("the adapter has no LoRA factors");
  return out;
}

Result<LoraAdapterValue> AdapterFromPeft(const PeftAdapter& peft) {
  FEDLORA_RETURN_IF_ERROR(ValidateAdapter(peft));
  LoraAdapterValue out;
  out.spec.rank = peft.r;
  out.spec.alpha = peft.lora_alpha;
  out.spec.rslora = peft.use_rslora;
  out.spec.dropout = peft.lora_dropout;
  out.spec.targets = TargetsOf(peft);
  const double s = Scale(out.spec);
  for (const auto& [module, f] : peft.modules) {
    out.tensors[LoraAName(module)] = f.a;
    const double ratio = peft.ScaleOf(module) / s;
    if (std::abs(ratio - 1.0) <= 1e-12) {
      out.tensors[LoraBName(module)] = f.b;
    } else {
      std::vector<double> b = ToDoubles(f.b);
      for (double& x : b) x *= ratio;
      out.tensors[LoraBName(module)] = FromDoubles(f.b.dtype, f.b.shape, b);
    }
  }
  return out;
}

Result<PeftAdapter> FoldCorrections(const PeftAdapter& adapter, const PeftCorrections& corrections,
                                    DType dtype) {
  if (!adapter.modules.empty()) FEDLORA_RETURN_IF_ERROR(ValidateAdapter(adapter));
  std::set<std::string, std::less<>> names;
  for (const auto& [module, f] : adapter.modules) names.insert(module);
  for (const auto& [module, c] : corrections) names.insert(module);
  PeftAdapter out;
  out.use_rslora = adapter.use_rslora;
  out.lora_dropout = adapter.lora_dropout;
  out.base_model_name_or_path = adapter.base_model_name_or_path;
  std::set<std::string> targets(adapter.target_modules.begin(), adapter.target_modules.end());
  std::map<std::int64_t, int> rank_count;
  std::map<std::string, std::int64_t, std::less<>> ranks;
  for (const std::string& module : names) {
    const auto fit = adapter.modules.find(module);
    const auto cit = corrections.find(module);
    const PeftFactors* f = fit == adapter.modules.end() ? nullptr : &fit->second;
    const PeftCorrection* c = cit == corrections.end() ? nullptr : &cit->second;
    std::int64_t d_out = f != nullptr ? f->b.shape[0] : -1;
    std::int64_t d_in = f != nullptr ? f->a.shape[1] : -1;
    const std::int64_t r = f != nullptr ? f->a.shape[0] : 0;
    std::int64_t k = 0;
    if (c != nullptr) {
      FEDLORA_RETURN_IF_ERROR(CheckMatrix(c->u, StrCat("correction U of '", module, "'")));
      FEDLORA_RETURN_IF_ERROR(CheckMatrix(c->v, StrCat("correction V of '", module, "'")));
      k = c->u.shape[1];
      if (c->v.shape[0] != k || (d_out >= 0 && c->u.shape[0] != d_out) ||
          (d_in >= 0 && c->v.shape[1] != d_in)) {
        return InvalidArgument("correction of '", module, "': U ", ShapeString(c->u.shape),
                               " and V ", ShapeString(c->v.shape), " do not fit ",
                               f != nullptr
                                   ? StrCat("the adapter (d_out ", d_out, ", d_in ", d_in, ")")
                                   : std::string("each other"));
      }
      d_out = c->u.shape[0];
      d_in = c->v.shape[1];
    }
    const std::int64_t rank = r + k;
    if (rank == 0) continue;
    // B' = [s B | U] (d_out x rank), A' = [A ; V] (rank x d_in).
    std::vector<double> b(static_cast<std::size_t>(d_out * rank));
    std::vector<double> a;
    a.reserve(static_cast<std::size_t>(rank * d_in));
    const double s = f != nullptr ? adapter.ScaleOf(module) : 1.0;
    const std::vector<double> bv = f != nullptr ? ToDoubles(f->b) : std::vector<double>();
    const std::vector<double> uv = c != nullptr ? ToDoubles(c->u) : std::vector<double>();
    for (std::int64_t i = 0; i < d_out; ++i) {
      for (std::int64_t j = 0; j < r; ++j) b[i * rank + j] = s * bv[i * r + j];
      for (std::int64_t j = 0; j < k; ++j) b[i * rank + r + j] = uv[i * k + j];
    }
    if (f != nullptr) {
      const std::vector<double> av = ToDoubles(f->a);
      a.insert(a.end(), av.begin(), av.end());
    }
    if (c != nullptr) {
      const std::vector<double> vv = ToDoubles(c->v);
      a.insert(a.end(), vv.begin(), vv.end());
    }
    out.modules[module] =
        PeftFactors{FromDoubles(dtype, {rank, d_in}, a), FromDoubles(dtype, {d_out, rank}, b)};
    targets.insert(std::string(ShortName(module)));
    ranks[module] = rank;
    ++rank_count[rank];
  }
  if (out.modules.empty()) return InvalidArgument("nothing to export: no factors, no corrections");
  // Scale 1 everywhere: alpha = rank (sqrt(rank) with rsLoRA). The commonest rank is r; the
  // others go to rank_pattern / alpha_pattern.
  std::int64_t base = 0;
  int best = 0;
  for (const auto& [rank, count] : rank_count) {
    if (count > best) base = rank, best = count;
  }
  const auto alpha_for = [&](std::int64_t rank) {
    return out.use_rslora ? std::sqrt(static_cast<double>(rank)) : static_cast<double>(rank);
  };
  out.r = static_cast<std::uint32_t>(base);
  out.lora_alpha = alpha_for(base);
  for (const auto& [module, rank] : ranks) {
    if (rank == base) continue;
    out.rank_pattern[module] = static_cast<std::uint32_t>(rank);
    out.alpha_pattern[module] = alpha_for(rank);
  }
  out.target_modules.assign(targets.begin(), targets.end());
  return out;
}

// ---- files ----------------------------------------------------------------------------------

std::string PeftConfigJson(const PeftAdapter& p) {
  // The keys of LoraConfig.to_dict() (PEFT 0.17; newer releases add keys that default to null
  // and accept files without them). json (not ordered_json) sorts keys like sort_keys=True.
  json alpha_pattern = json::object(), rank_pattern = json::object();
  for (const auto& [module, alpha] : p.alpha_pattern) alpha_pattern[module] = Number(alpha);
  for (const auto& [module, rank] : p.rank_pattern) rank_pattern[module] = rank;
  json j = json::object();
  j["alpha_pattern"] = std::move(alpha_pattern);
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] =
      p.base_model_name_or_path.empty() ? json(nullptr) : json(p.base_model_name_or_path);
  j["bias"] = "none";
  j["corda_config"] = nullptr;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = json::object();
  j["lora_alpha"] = Number(p.lora_alpha);
  j["lora_bias"] = false;
  j["lora_dropout"] = p.lora_dropout;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["qalora_group_size"] = 16;
  j["r"] = p.r;
  j["rank_pattern"] = std::move(rank_pattern);
  j["revision"] = nullptr;
  j["target_modules"] = TargetsOf(p);
  j["task_type"] = "CAUSAL_LM";
  j["trainable_token_indices"] = nullptr;
  j["use_dora"] = false;
  j["use_qalora"] = false;
  j["use_rslora"] = p.use_rslora;
  // Python's json.dumps(indent=2, sort_keys=True): ensure_ascii, no trailing newline.
  return j.dump(2, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
}

TensorMap PeftTensors(const PeftAdapter& p, DType dtype) {
  TensorMap out;
  for (const auto& [module, f] : p.modules) {
    out.emplace(StrCat(kPrefix, module, kA), As(f.a, dtype));
    out.emplace(StrCat(kPrefix, module, kB), As(f.b, dtype));
  }
  return out;
}

bool IsPeftDirectory(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(Join(path, kPeftConfigFile), ec);
}

Status ExportPeft(const std::string& dir, const PeftAdapter& adapter,
                  const PeftExportOptions& options) {
  if (dir.empty()) return InvalidArgument("ExportPeft: empty directory name");
  PeftAdapter folded;
  const PeftAdapter* out = &adapter;
  if (!options.corrections.empty()) {
    // Fold in f64 and round once, to options.dtype, below.
    FEDLORA_ASSIGN_OR_RETURN(folded, FoldCorrections(adapter, options.corrections, DType::kF64));
    out = &folded;
  }
  FEDLORA_RETURN_IF_ERROR(ValidateAdapter(*out).WithContext(dir));

  std::filesystem::path final_path = std::filesystem::path(dir).lexically_normal();
  if (final_path.filename().empty()) final_path = final_path.parent_path();
  const std::string final_dir = final_path.string();
  const std::string parent =
      final_path.has_parent_path() ? final_path.parent_path().string() : std::string(".");
  std::error_code ec;
  if (std::filesystem::exists(final_path, ec)) {
    if (!std::filesystem::is_directory(final_path, ec)) {
      return FailedPrecondition("PEFT export: '", final_dir, "' exists and is not a directory");
    }
    if (!std::filesystem::is_empty(final_path, ec) && !IsPeftDirectory(final_dir)) {
      return FailedPrecondition("PEFT export: refusing to replace '", final_dir,
                                "': it is not empty and holds no ", kPeftConfigFile);
    }
  }
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(parent));
  const std::string staging =
      Join(parent, StrCat(".", final_path.filename().string(), ".staging-", ::getpid()));
  FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(staging));
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(staging));

  safetensors::Metadata metadata(options.metadata.begin(), options.metadata.end());
  metadata["format"] = "pt";  // What PEFT's safe_save_file writes; transformers checks it.
  const std::vector<std::byte> weights =
      safetensors::Serialize(PeftTensors(*out, options.dtype), metadata);
  Status s = fs::WriteFileSynced(Join(staging, kPeftWeightsFile), weights);
  if (s.ok()) s = fs::WriteFileSynced(Join(staging, kPeftConfigFile), PeftConfigJson(*out));
  if (s.ok()) s = ReplaceDirectory(staging, final_dir, parent);
  if (!s.ok()) {
    (void)fs::RemoveAll(staging);
    return s.WithContext(StrCat("PEFT export to '", final_dir, "'"));
  }
  return OkStatus();
}

Result<PeftAdapter> ImportPeft(const std::string& dir) {
  const std::string config_path = Join(dir, kPeftConfigFile);
  const std::string weights_path = Join(dir, kPeftWeightsFile);
  const std::string pickle_path = Join(dir, kPeftPickleFile);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return NotFound("PEFT adapter '", dir, "': no such directory");
  }
  if (!std::filesystem::exists(config_path, ec)) {
    return NotFound(config_path, ": not found, so '", dir, "' is not a PEFT adapter directory");
  }
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(config_path));
  ordered_json j;
  try {
    j = ordered_json::parse(text);
  } catch (const ordered_json::exception& e) {
    return InvalidArgument(config_path, ": not valid JSON: ", e.what());
  }
  if (!j.is_object()) return InvalidArgument(config_path, ": not a JSON object");
  const ConfigReader c(j, config_path);
  const ordered_json* peft_type = c.Find("peft_type");
  if (peft_type == nullptr) {
    return InvalidArgument(config_path, ": key 'peft_type' is missing (every PEFT config has it)");
  }
  if (!peft_type->is_string()) return c.Bad("peft_type", "a string");
  if (peft_type->get<std::string>() != "LORA") {
    return Unimplemented(config_path, ": key 'peft_type' = ", peft_type->dump(),
                         ": only LORA adapters are supported");
  }
  FEDLORA_RETURN_IF_ERROR(CheckFeatures(c));

  PeftAdapter out;
  if (const ordered_json* r = c.Find("r")) FEDLORA_RETURN_IF_ERROR(c.Rank("r", *r, &out.r));
  FEDLORA_RETURN_IF_ERROR(c.Positive("lora_alpha", &out.lora_alpha));
  FEDLORA_RETURN_IF_ERROR(c.Bool("use_rslora", &out.use_rslora));
  if (const ordered_json* d = c.Find("lora_dropout")) {
    if (!d->is_number() || !(d->get<double>() >= 0 && d->get<double>() < 1)) {
      return c.Bad("lora_dropout", "a number in [0, 1)");
    }
    out.lora_dropout = d->get<double>();
  }
  if (const ordered_json* b = c.Find("base_model_name_or_path")) {
    if (!b->is_string()) return c.Bad("base_model_name_or_path", "a string or null");
    out.base_model_name_or_path = b->get<std::string>();
  }
  const ordered_json empty = ordered_json::object();
  const ordered_json* rank_pattern = c.Find("rank_pattern");
  const ordered_json* alpha_pattern = c.Find("alpha_pattern");
  if (rank_pattern != nullptr && !rank_pattern->is_object()) {
    return c.Bad("rank_pattern", "an object");
  }
  if (alpha_pattern != nullptr && !alpha_pattern->is_object()) {
    return c.Bad("alpha_pattern", "an object");
  }
  if (rank_pattern == nullptr) rank_pattern = &empty;
  if (alpha_pattern == nullptr) alpha_pattern = &empty;
  std::vector<std::string> listed_targets;
  if (const ordered_json* t = c.Find("target_modules"); t != nullptr && t->is_array()) {
    for (const auto& e : *t) {
      if (!e.is_string()) return c.Bad("target_modules", "a list of strings or a string");
      listed_targets.push_back(e.get<std::string>());
    }
  } else if (t != nullptr && !t->is_string()) {
    return c.Bad("target_modules", "a list of strings or a string");
  }

  // The weights.
  if (!std::filesystem::exists(weights_path, ec)) {
    if (std::filesystem::exists(pickle_path, ec)) {
      return Unimplemented(pickle_path,
                           ": pickled PyTorch weights are not read (unpickling can "
                           "run arbitrary code); save the adapter with safe_serialization=True "
                           "to get ",
                           kPeftWeightsFile);
    }
    return NotFound(weights_path, ": not found (the adapter has no weights)");
  }
  FEDLORA_ASSIGN_OR_RETURN(safetensors::File file, safetensors::Read(weights_path));
  struct Slots {
    const Tensor* a = nullptr;
    const Tensor* b = nullptr;
    std::string a_key, b_key;
  };
  std::map<std::string, Slots, std::less<>> slots;
  for (const auto& [name, t] : file.tensors) {
    const std::string_view n = name;
    if (n.find(".lora_magnitude_vector") != std::string_view::npos) {
      return Unimplemented(weights_path, ": tensor '", name,
                           "' is a DoRA magnitude: DoRA is "
                           "not supported");
    }
    if (n.find(".lora_embedding_") != std::string_view::npos) {
      return Unimplemented(weights_path, ": tensor '", name,
                           "': LoRA on embeddings is not "
                           "supported");
    }
    if (n.find("modules_to_save") != std::string_view::npos) {
      return Unimplemented(weights_path, ": tensor '", name,
                           "' belongs to modules_to_save, "
                           "which is not supported");
    }
    if (!n.starts_with(kPrefix)) {
      return InvalidArgument(weights_path, ": tensor '", name, "' does not start with '", kPrefix,
                             "'");
    }
    const std::string_view rest = n.substr(kPrefix.size());
    std::string_view suffix;
    for (std::string_view s : {kA, kB, kADefault, kBDefault}) {
      if (rest.ends_with(s)) suffix = s;
    }
    if (suffix.empty()) {
      if (n.ends_with(".bias")) {
        return Unimplemented(weights_path, ": tensor '", name,
                             "' is a trained bias, which is "
                             "not supported");
      }
      return InvalidArgument(weights_path, ": tensor '", name,
                             "' is not a LoRA factor "
                             "(expected base_model.model.<module>.lora_A.weight / .lora_B.weight)");
    }
    Slots& slot = slots[std::string(rest.substr(0, rest.size() - suffix.size()))];
    const bool is_a = suffix == kA || suffix == kADefault;
    const Tensor*& target = is_a ? slot.a : slot.b;
    std::string& key = is_a ? slot.a_key : slot.b_key;
    if (target != nullptr) {
      return InvalidArgument(weights_path, ": tensors '", key, "' and '", name,
                             "' are the same factor");
    }
    if (t.shape.size() != 2) {
      return InvalidArgument(weights_path, ": tensor '", name, "' must be a matrix, not ",
                             ShapeString(t.shape));
    }
    if (!AllFinite(t)) {
      return InvalidArgument(weights_path, ": tensor '", name, "' has non-finite values");
    }
    target = &t;
    key = name;
  }
  if (slots.empty()) return InvalidArgument(weights_path, ": holds no LoRA tensors");
  for (const auto& [module, slot] : slots) {
    if (slot.b == nullptr) {
      return InvalidArgument(weights_path, ": tensor '", slot.a_key, "' has no matching lora_B ('",
                             kPrefix, module, kB, "')");
    }
    if (slot.a == nullptr) {
      return InvalidArgument(weights_path, ": tensor '", slot.b_key, "' has no matching lora_A ('",
                             kPrefix, module, kA, "')");
    }
    if (!listed_targets.empty() && !Targeted(module, listed_targets)) {
      return InvalidArgument(weights_path, ": tensor '", slot.a_key, "': module '", module,
                             "' is not covered by target_modules in ", config_path,
                             ", so PEFT would not load it");
    }
    const std::int64_t rank = slot.a->shape[0];
    if (slot.b->shape[1] != rank || rank == 0) {
      return InvalidArgument(weights_path, ": tensor '", slot.b_key, "' ",
                             ShapeString(slot.b->shape), " does not match '", slot.a_key, "' ",
                             ShapeString(slot.a->shape), " (B is d_out x r, A is r x d_in)");
    }
    std::uint32_t want = out.r;
    if (const ordered_json* v = MatchPattern(*rank_pattern, module)) {
      FEDLORA_RETURN_IF_ERROR(c.Rank(StrCat("rank_pattern.", module), *v, &want));
    }
    if (static_cast<std::int64_t>(want) != rank) {
      return InvalidArgument(weights_path, ": tensor '", slot.a_key, "' has rank ", rank, " but ",
                             config_path, " gives module '", module, "' rank ", want,
                             " (r or rank_pattern)");
    }
    double alpha = out.lora_alpha;
    if (const ordered_json* v = MatchPattern(*alpha_pattern, module)) {
      if (!v->is_number() || !(v->get<double>() > 0) || !std::isfinite(v->get<double>())) {
        return InvalidArgument(config_path, ": key 'alpha_pattern' entry for '", module,
                               "' must be a positive number, not ", v->dump());
      }
      alpha = v->get<double>();
    }
    if (want != out.r) out.rank_pattern[module] = want;
    if (alpha != out.lora_alpha) out.alpha_pattern[module] = alpha;
    const DType dtype = slot.a->dtype == DType::kF64 ? DType::kF64 : DType::kF32;
    out.modules[module] = PeftFactors{As(*slot.a, dtype), As(*slot.b, dtype)};
  }
  std::set<std::string> targets(listed_targets.begin(), listed_targets.end());
  if (targets.empty()) {
    for (const auto& [module, f] : out.modules) targets.insert(std::string(ShortName(module)));
  }
  out.target_modules.assign(targets.begin(), targets.end());
  return out;
}

}  // namespace fedlora::lora
