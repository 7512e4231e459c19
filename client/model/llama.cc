// llama.cc — the Llama model in LibTorch: the llama.c and Hugging Face checkpoint loaders (exact
// layouts, sizes checked), the canonical digest of the base weights, and the forward pass.
// Longer than ~600 lines because the loaders and the digest share the expected-shape tables.
#include "client/model/llama.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numbers>

#include "common/crypto/sha256.h"

namespace fedlora::client {
namespace {

constexpr std::uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"; "24ka" on disk.
constexpr std::size_t kLegacyHeaderBytes = 7 * 4;
constexpr std::size_t kV1HeaderBytes = 256;
// Generous bounds that keep every size product far from int64 overflow.
constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
constexpr std::int64_t kMaxLayers = std::int64_t{1} << 12;

struct CheckpointFileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

Result<std::vector<std::byte>> ReadCheckpointFile(const std::string& path) {
  std::unique_ptr<std::FILE, CheckpointFileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return NotFound("cannot open checkpoint '", path, "': ", std::strerror(errno));
  std::vector<std::byte> bytes;
  if (std::fseek(file.get(), 0, SEEK_END) == 0) {
    const long size = std::ftell(file.get());
    if (size > 0) bytes.reserve(static_cast<std::size_t>(size));
    std::rewind(file.get());
  }
  std::byte buffer[1 << 16];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file.get())) > 0) {
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
  if (std::ferror(file.get())) {
    return DataLoss("error reading checkpoint '", path, "': ", std::strerror(errno));
  }
  return bytes;
}

template <typename T>
T LoadLe(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // The host is little-endian (see common/tensor.cc).
  return v;
}

std::string LayerName(std::int64_t layer, std::string_view suffix) {
  return StrCat("model.layers.", layer, ".", suffix);
}

std::string_view ModulePath(ModuleKind kind) {
  switch (kind) {
    case ModuleKind::kQ: return "self_attn.q_proj";
    case ModuleKind::kK: return "self_attn.k_proj";
    case ModuleKind::kV: return "self_attn.v_proj";
    case ModuleKind::kO: return "self_attn.o_proj";
    case ModuleKind::kGate: return "mlp.gate_proj";
    case ModuleKind::kUp: return "mlp.up_proj";
    case ModuleKind::kDown: return "mlp.down_proj";
  }
  return "";
}

}  // namespace

Status ValidateLlamaConfig(const LlamaConfig& c, std::string_view source) {
  const auto bad = [&](const auto&... why) {
    return InvalidArgument("checkpoint '", source, "': impossible configuration: ", why...);
  };
  for (const auto& [name, value, limit] :
       {std::tuple{"dim", c.dim, kMaxWidth}, std::tuple{"hidden_dim", c.hidden_dim, kMaxWidth},
        std::tuple{"n_layers", c.n_layers, kMaxLayers}, std::tuple{"n_heads", c.n_heads, c.dim},
        std::tuple{"n_kv_heads", c.n_kv_heads, c.n_heads},
        std::tuple{"vocab_size", c.vocab_size, kMaxWidth},
        std::tuple{"seq_len", c.seq_len, kMaxWidth}}) {
    if (value <= 0 || value > limit) return bad(name, " = ", value, " is not in [1, ", limit, "]");
  }
  if (c.head_dim < 0 || c.head_dim > kMaxWidth / c.n_heads) {
    return bad("head_dim = ", c.head_dim, " is not in [0, ", kMaxWidth / c.n_heads, "]");
  }
  if (c.head_dim == 0 && c.dim % c.n_heads != 0) {
    return bad("n_heads ", c.n_heads, " does not divide dim ", c.dim);
  }
  if (c.head_size() % 2 != 0) return bad("head size ", c.head_size(), " is odd (RoPE needs pairs)");
  if (c.n_heads % c.n_kv_heads != 0) {
    return bad("n_kv_heads ", c.n_kv_heads, " does not divide n_heads ", c.n_heads);
  }
  if (!(c.norm_eps > 0.0) || !std::isfinite(c.norm_eps)) return bad("norm_eps = ", c.norm_eps);
  if (!(c.rope_theta > 1.0) || !std::isfinite(c.rope_theta)) {
    return bad("rope_theta = ", c.rope_theta, " (must be finite and > 1)");
  }
  if (c.sliding_window < 0) return bad("sliding_window = ", c.sliding_window);
  if (c.max_position_embeddings < 0) {
    return bad("max_position_embeddings = ", c.max_position_embeddings);
  }
  const RopeScaling& r = c.rope_scaling;
  if (r.type != RopeScaling::Type::kNone && (!(r.factor > 0.0) || !std::isfinite(r.factor))) {
    return bad("rope_scaling factor = ", r.factor, " (must be finite and > 0)");
  }
  if (r.type == RopeScaling::Type::kLlama3 &&
      (!(r.low_freq_factor > 0.0) || !(r.high_freq_factor > r.low_freq_factor) ||
       !std::isfinite(r.high_freq_factor) || r.original_max_position_embeddings <= 0)) {
    return bad("llama3 rope_scaling needs 0 < low_freq_factor (", r.low_freq_factor,
               ") < high_freq_factor (", r.high_freq_factor,
               ") and original_max_position_embeddings (", r.original_max_position_embeddings,
               ") > 0");
  }
  return OkStatus();
}

namespace {

// Every tensor `c` requires, with its shape.
std::map<std::string, std::vector<std::int64_t>> ExpectedShapes(const LlamaConfig& c) {
  const std::int64_t d = c.dim, h = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim();
  std::map<std::string, std::vector<std::int64_t>> expected = {
      {"model.embed_tokens.weight", {c.vocab_size, d}}, {"model.norm.weight", {d}}};
  if (!c.shared_classifier) expected["lm_head.weight"] = {c.vocab_size, d};
  const std::int64_t out[] = {q, kv, kv, d, h, h, d};
  const std::int64_t in[] = {d, d, d, q, d, d, h};
  const bool bias[] = {c.qkv_bias, c.qkv_bias, c.qkv_bias, c.o_bias,
                       c.mlp_bias, c.mlp_bias, c.mlp_bias};
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    expected[LayerName(l, "input_layernorm.weight")] = {d};
    expected[LayerName(l, "post_attention_layernorm.weight")] = {d};
    for (std::size_t k = 0; k < kModulesPerLayer; ++k) {
      const std::string module = LayerName(l, ModulePath(ModuleKind(k)));
      expected[StrCat(module, ".weight")] = {out[k], in[k]};
      if (bias[k]) expected[StrCat(module, ".bias")] = {out[k]};
    }
  }
  return expected;
}

// Sequential reader of float32 tensors from a checkpoint whose size was already checked.
class F32Cursor {
 public:
  F32Cursor(std::span<const std::byte> bytes, std::size_t offset) : bytes_(bytes), pos_(offset) {}
  at::Tensor Next(at::IntArrayRef shape) {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    const std::size_t n = static_cast<std::size_t>(t.numel()) * sizeof(float);
    FEDLORA_CHECK(pos_ + n <= bytes_.size());
    std::memcpy(t.data_ptr<float>(), bytes_.data() + pos_, n);
    pos_ += n;
    return t;
  }
  void Skip(std::int64_t floats) { pos_ += static_cast<std::size_t>(floats) * sizeof(float); }

 private:
  std::span<const std::byte> bytes_;
  std::size_t pos_;
};

// llama2.c rotates interleaved pairs (2j, 2j+1) of each head; HF rotates halves (j, j + hs/2).
// Permuting the rows of wq/wk turns one into the other (data README §1c).
at::Tensor InterleavedToHalves(const at::Tensor& w, std::int64_t heads, std::int64_t head_size) {
  const std::int64_t in = w.size(1);
  return w.reshape({heads, head_size / 2, 2, in}).transpose(1, 2).reshape({heads * head_size, in})
      .contiguous();
}

// Splits llama2.c's per-kind stacks ([L, out, in]) into HF-named per-layer tensors.
struct Llama2cStacks {
  at::Tensor embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;
};

std::map<std::string, at::Tensor> ToHfTensors(const LlamaConfig& c, const Llama2cStacks& s) {
  std::map<std::string, at::Tensor> t;
  t["model.embed_tokens.weight"] = s.embed;
  t["model.norm.weight"] = s.rms_final;
  if (!c.shared_classifier) t["lm_head.weight"] = s.wcls;
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    t[LayerName(l, "input_layernorm.weight")] = s.rms_att[l].clone();
    t[LayerName(l, "post_attention_layernorm.weight")] = s.rms_ffn[l].clone();
    t[LayerName(l, "self_attn.q_proj.weight")] =
        InterleavedToHalves(s.wq[l], c.n_heads, c.head_size());
    t[LayerName(l, "self_attn.k_proj.weight")] =
        InterleavedToHalves(s.wk[l], c.n_kv_heads, c.head_size());
    t[LayerName(l, "self_attn.v_proj.weight")] = s.wv[l].clone();
    t[LayerName(l, "self_attn.o_proj.weight")] = s.wo[l].clone();
    t[LayerName(l, "mlp.gate_proj.weight")] = s.w1[l].clone();
    t[LayerName(l, "mlp.down_proj.weight")] = s.w2[l].clone();
    t[LayerName(l, "mlp.up_proj.weight")] = s.w3[l].clone();
  }
  return t;
}

// Float count of the weights both layouts store (everything but RoPE tables and wcls).
std::int64_t CoreFloats(const LlamaConfig& c) {
  const std::int64_t L = c.n_layers, d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  return c.vocab_size * d + 2 * L * d + d + L * (2 * d * d + 2 * kv * d) + 3 * L * h * d;
}

Status CheckFileSize(std::string_view source, std::size_t actual, std::int64_t expected) {
  const auto want = static_cast<std::size_t>(expected);
  if (actual < want) {
    return DataLoss("checkpoint '", source, "' is truncated: ", actual, " bytes, but its header ",
                    "describes ", want);
  }
  if (actual > want) {
    return InvalidArgument("checkpoint '", source, "' has ", actual - want,
                           " bytes after the last tensor (header describes ", want, " bytes)");
  }
  return OkStatus();
}

Result<std::map<std::string, at::Tensor>> ParseLegacy(std::span<const std::byte> bytes,
                                                     std::string_view source,
                                                     LlamaConfig* config) {
  if (bytes.size() < kLegacyHeaderBytes) {
    return DataLoss("checkpoint '", source, "' is truncated: ", bytes.size(),
                    " bytes, shorter than the 28-byte llama2.c header");
  }
  LlamaConfig& c = *config;
  const auto field = [&](int i) { return std::int64_t{LoadLe<std::int32_t>(&bytes[4 * i])}; };
  c.dim = field(0), c.hidden_dim = field(1), c.n_layers = field(2), c.n_heads = field(3);
  c.n_kv_heads = field(4), c.vocab_size = field(5), c.seq_len = field(6);
  // Legacy files mark a separate classifier with a negative vocab_size.
  c.shared_classifier = c.vocab_size > 0;
  c.vocab_size = c.vocab_size < 0 ? -c.vocab_size : c.vocab_size;
  FEDLORA_RETURN_IF_ERROR(ValidateLlamaConfig(c, source));
  const std::int64_t rope_floats = c.seq_len * c.head_size();  // cos and sin, hs/2 each.
  const std::int64_t floats =
      CoreFloats(c) + rope_floats + (c.shared_classifier ? 0 : c.vocab_size * c.dim);
  FEDLORA_RETURN_IF_ERROR(
      CheckFileSize(source, bytes.size(), kLegacyHeaderBytes + 4 * floats));

  const std::int64_t L = c.n_layers, d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  F32Cursor in(bytes, kLegacyHeaderBytes);
  Llama2cStacks s;
  s.embed = in.Next({c.vocab_size, d});
  s.rms_att = in.Next({L, d});
  s.wq = in.Next({L, d, d});
  s.wk = in.Next({L, kv, d});
  s.wv = in.Next({L, kv, d});
  s.wo = in.Next({L, d, d});
  s.rms_ffn = in.Next({L, d});
  s.w1 = in.Next({L, h, d});
  s.w2 = in.Next({L, d, h});
  s.w3 = in.Next({L, h, d});
  s.rms_final = in.Next({d});
  in.Skip(rope_floats);  // freq_cis_real/imag: recomputed in double precision instead.
  s.wcls = c.shared_classifier ? s.embed : in.Next({c.vocab_size, d});
  return ToHfTensors(c, s);
}

Result<std::map<std::string, at::Tensor>> ParseV1(std::span<const std::byte> bytes,
                                                 std::string_view source, LlamaConfig* config) {
  if (bytes.size() < kV1HeaderBytes) {
    return DataLoss("checkpoint '", source, "' is truncated: ", bytes.size(),
                    " bytes, shorter than the 256-byte version-1 header");
  }
  const std::int32_t version = LoadLe<std::int32_t>(&bytes[4]);
  if (version == 2) {
    return Unimplemented("checkpoint '", source, "' is llama2.c version 2 (int8-quantized), "
                         "which is not supported (hint: export with version 1)");
  }
  if (version != 1) {
    return InvalidArgument("checkpoint '", source, "' has the llama2.c magic but unknown version ",
                           version, " (expected 1)");
  }
  LlamaConfig& c = *config;
  const auto field = [&](int i) { return std::int64_t{LoadLe<std::int32_t>(&bytes[8 + 4 * i])}; };
  c.dim = field(0), c.hidden_dim = field(1), c.n_layers = field(2), c.n_heads = field(3);
  c.n_kv_heads = field(4), c.vocab_size = field(5), c.seq_len = field(6);
  const auto shared = static_cast<std::uint8_t>(bytes[36]);
  if (shared > 1) {
    return InvalidArgument("checkpoint '", source, "': impossible header: shared_classifier = ",
                           int(shared), " (expected 0 or 1)");
  }
  c.shared_classifier = shared == 1;
  FEDLORA_RETURN_IF_ERROR(ValidateLlamaConfig(c, source));
  const std::int64_t floats = CoreFloats(c) + (c.shared_classifier ? 0 : c.vocab_size * c.dim);
  FEDLORA_RETURN_IF_ERROR(CheckFileSize(source, bytes.size(), kV1HeaderBytes + 4 * floats));

  const std::int64_t L = c.n_layers, d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  F32Cursor in(bytes, kV1HeaderBytes);
  Llama2cStacks s;
  s.rms_att = in.Next({L, d});
  s.rms_ffn = in.Next({L, d});
  s.rms_final = in.Next({d});
  s.embed = in.Next({c.vocab_size, d});
  s.wq = in.Next({L, d, d});
  s.wk = in.Next({L, kv, d});
  s.wv = in.Next({L, kv, d});
  s.wo = in.Next({L, d, d});
  s.w1 = in.Next({L, h, d});
  s.w2 = in.Next({L, d, h});
  s.w3 = in.Next({L, h, d});
  s.wcls = c.shared_classifier ? s.embed : in.Next({c.vocab_size, d});
  return ToHfTensors(c, s);
}

void HashInt64(crypto::Sha256Hasher& hasher, std::int64_t v) {
  std::byte le[8];
  std::memcpy(le, &v, sizeof le);
  hasher.Update(std::span<const std::byte>(le, sizeof le));
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
}

// HF rotate_half RoPE on [B, T, heads, hs] with cos/sin [T, hs] (halves repeated).
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const std::int64_t half = x.size(-1) / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half);
  const at::Tensor x2 = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  const at::Tensor c = cos.unsqueeze(1);  // [T, 1, hs] broadcasts over batch and heads.
  const at::Tensor s = sin.unsqueeze(1);
  return x * c + rotated * s;
}

}  // namespace

std::string_view ModuleShortName(ModuleKind kind) {
  const std::string_view path = ModulePath(kind);
  return path.substr(path.find('.') + 1);
}

std::vector<double> RopeInverseFrequencies(const LlamaConfig& config) {
  const std::int64_t hs = config.head_size();
  // at::pow, as before scaling existed, so unscaled tables stay bit-identical.
  const at::Tensor j = at::arange(hs / 2, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor base = at::pow(config.rope_theta, j * (-2.0 / static_cast<double>(hs)));
  std::vector<double> inv(base.data_ptr<double>(), base.data_ptr<double>() + hs / 2);
  const RopeScaling& r = config.rope_scaling;
  switch (r.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (double& f : inv) f /= r.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      // transformers' _compute_llama3_parameters: wavelengths shorter than
      // original / high_freq_factor are kept, longer than original / low_freq_factor divided by
      // `factor`, and the band between interpolated smoothly.
      const double original = static_cast<double>(r.original_max_position_embeddings);
      const double low_freq_wavelen = original / r.low_freq_factor;
      const double high_freq_wavelen = original / r.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen < high_freq_wavelen) continue;
        if (wavelen > low_freq_wavelen) {
          f /= r.factor;
          continue;
        }
        const double smooth =
            (original / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = (1.0 - smooth) * f / r.factor + smooth * f;
      }
      break;
    }
  }
  return inv;
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::Load(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) &&
      std::filesystem::exists(std::filesystem::path(path) / "config.json", ec)) {
    return LoadHf(path);
  }
  return LoadLlama2c(path);
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::LoadLlama2c(const std::string& path) try {
  FEDLORA_ASSIGN_OR_RETURN(const std::vector<std::byte> bytes, ReadCheckpointFile(path));
  LlamaConfig config;
  Result<std::map<std::string, at::Tensor>> tensors =
      bytes.size() >= 4 && LoadLe<std::uint32_t>(bytes.data()) == kLlama2cMagic
          ? ParseV1(bytes, path, &config)
          : ParseLegacy(bytes, path, &config);
  if (!tensors.ok()) return tensors.status();
  return Build(config, std::move(tensors).value(), path);
} catch (const c10::Error& e) {
  return Internal("loading checkpoint '", path, "': ", e.what_without_backtrace());
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::FromTensors(
    const LlamaConfig& config, const std::map<std::string, at::Tensor>& tensors) try {
  FEDLORA_RETURN_IF_ERROR(ValidateLlamaConfig(config, "<tensors>"));
  std::map<std::string, at::Tensor> owned;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) return InvalidArgument("tensor '", name, "' is undefined");
    owned[name] = t.detach().to(at::kFloat).contiguous().clone();
  }
  return Build(config, std::move(owned), "<tensors>");
} catch (const c10::Error& e) {
  return Internal("building model from tensors: ", e.what_without_backtrace());
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::Build(
    const LlamaConfig& config, std::map<std::string, at::Tensor> tensors,
    std::string_view source, const std::map<std::string, std::string, std::less<>>* tensor_files) {
  const auto file_of = [&](const std::string& name) -> std::string_view {
    if (tensor_files == nullptr) return source;
    const auto it = tensor_files->find(name);
    return it == tensor_files->end() ? source : std::string_view(it->second);
  };
  const std::map<std::string, std::vector<std::int64_t>> expected = ExpectedShapes(config);
  for (const auto& [name, t] : tensors) {
    if (!expected.contains(name)) {
      return InvalidArgument(file_of(name), ": unexpected tensor '", name,
                             "' for this configuration");
    }
  }
  for (const auto& [name, shape] : expected) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      // From files, a missing tensor is a missing thing; from FromTensors, a malformed argument.
      return Status(tensor_files != nullptr ? StatusCode::kNotFound : StatusCode::kInvalidArgument,
                    StrCat(source, ": missing tensor '", name, "'"));
    }
    if (it->second.sizes() != at::IntArrayRef(shape)) {
      return InvalidArgument(file_of(name), ": tensor '", name, "' has shape ",
                             ShapeString(it->second.sizes().vec()), ", expected ",
                             ShapeString(shape));
    }
  }

  for (const auto& [name, t] : tensors) {
    if (!at::isfinite(t).all().item<bool>()) {
      return DataLoss(file_of(name), ": tensor '", name, "' holds NaN or infinity");
    }
  }

  std::shared_ptr<LlamaModel> model(new LlamaModel());
  model->config_ = config;
  for (auto& [name, t] : tensors) {
    t = t.contiguous();
    t.set_requires_grad(false);
    model->tensors_.emplace(name, t);
  }
  const auto get = [&](const std::string& name) { return model->tensors_.at(name); };
  const auto get_if = [&](const std::string& name) {
    const auto it = model->tensors_.find(name);
    return it == model->tensors_.end() ? at::Tensor() : it->second;
  };
  model->embed_ = get("model.embed_tokens.weight");
  model->final_norm_ = get("model.norm.weight");
  model->lm_head_ = config.shared_classifier ? model->embed_ : get("lm_head.weight");
  for (std::int64_t l = 0; l < config.n_layers; ++l) {
    const auto module = [&](ModuleKind k) {
      return get(LayerName(l, StrCat(ModulePath(k), ".weight")));
    };
    const auto bias = [&](ModuleKind k) {
      return get_if(LayerName(l, StrCat(ModulePath(k), ".bias")));
    };
    Layer layer;
    layer.attn_norm = get(LayerName(l, "input_layernorm.weight"));
    layer.ffn_norm = get(LayerName(l, "post_attention_layernorm.weight"));
    at::Tensor* weights[] = {&layer.wq, &layer.wk, &layer.wv, &layer.wo,
                             &layer.w_gate, &layer.w_up, &layer.w_down};
    at::Tensor* biases[] = {&layer.bq, &layer.bk, &layer.bv, &layer.bo,
                            &layer.b_gate, &layer.b_up, &layer.b_down};
    for (std::size_t k = 0; k < kModulesPerLayer; ++k) {
      const at::Tensor w = module(ModuleKind(k));
      *weights[k] = w;
      *biases[k] = bias(ModuleKind(k));
      model->module_index_.emplace(LayerName(l, ModulePath(ModuleKind(k))), model->modules_.size());
      model->modules_.push_back({LayerName(l, ModulePath(ModuleKind(k))), w.size(0), w.size(1)});
      model->module_weights_.push_back(w);
      model->module_biases_.push_back(*biases[k]);
    }
    model->layers_.push_back(std::move(layer));
  }

  // RoPE tables in double, rounded once to float: angle(pos, j) = pos * inv_freq[j].
  const std::vector<double> inv_freq_values = RopeInverseFrequencies(config);
  const at::Tensor inv_freq =
      at::tensor(at::ArrayRef<double>(inv_freq_values), at::TensorOptions().dtype(at::kDouble));
  const at::Tensor pos = at::arange(config.seq_len, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor angles = at::outer(pos, inv_freq);
  const at::Tensor full = at::cat({angles, angles}, -1);
  model->rope_cos_ = at::cos(full).to(at::kFloat);
  model->rope_sin_ = at::sin(full).to(at::kFloat);

  crypto::Sha256Hasher hasher;
  for (const auto& [name, t] : model->tensors_) {
    hasher.Update(std::string_view(name));
    const std::byte zero{0};
    hasher.Update(std::span<const std::byte>(&zero, 1));
    HashInt64(hasher, static_cast<std::int64_t>(DType::kF32));
    HashInt64(hasher, t.dim());
    for (std::int64_t size : t.sizes()) HashInt64(hasher, size);
    hasher.Update(std::span<const std::byte>(static_cast<const std::byte*>(t.data_ptr()),
                                             static_cast<std::size_t>(t.numel()) * sizeof(float)));
  }
  model->digest_ = crypto::ToHex(hasher.Finish());
  return std::shared_ptr<const LlamaModel>(std::move(model));
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::To(const at::Device& device) const try {
  std::shared_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = config_;
  m->modules_ = modules_;
  m->module_index_ = module_index_;
  m->digest_ = digest_;
  // One copy per distinct tensor, so aliases (a tied lm_head, the layer views of tensors_)
  // stay aliases on the device.
  std::map<const void*, at::Tensor> moved;
  const auto move = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) return t;
    const void* key = t.unsafeGetTensorImpl();
    if (const auto it = moved.find(key); it != moved.end()) return it->second;
    at::Tensor copy = t.to(device, /*non_blocking=*/false, /*copy=*/true);
    moved.emplace(key, copy);
    return copy;
  };
  for (const auto& [name, t] : tensors_) m->tensors_.emplace(name, move(t));
  for (const Layer& l : layers_) {
    m->layers_.push_back(Layer{move(l.attn_norm), move(l.wq), move(l.wk), move(l.wv), move(l.wo),
                               move(l.ffn_norm), move(l.w_gate), move(l.w_up), move(l.w_down),
                               move(l.bq), move(l.bk), move(l.bv), move(l.bo), move(l.b_gate),
                               move(l.b_up), move(l.b_down)});
  }
  m->embed_ = move(embed_);
  m->final_norm_ = move(final_norm_);
  m->lm_head_ = move(lm_head_);
  m->rope_cos_ = move(rope_cos_);
  m->rope_sin_ = move(rope_sin_);
  for (const at::Tensor& w : module_weights_) m->module_weights_.push_back(move(w));
  for (const at::Tensor& b : module_biases_) m->module_biases_.push_back(move(b));
  return std::shared_ptr<const LlamaModel>(std::move(m));
} catch (const c10::Error& e) {
  return Internal("moving the model to ", device.str(), ": ", e.what_without_backtrace());
}

at::Device LlamaModel::device() const { return embed_.device(); }

at::Tensor LlamaModel::Weight(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? at::Tensor() : it->second;
}

std::ptrdiff_t LlamaModel::ModuleIndex(std::string_view module) const {
  const auto it = module_index_.find(module);
  return it == module_index_.end() ? -1 : static_cast<std::ptrdiff_t>(it->second);
}

std::vector<std::string> LlamaModel::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) names.push_back(name);
  return names;
}

Result<at::Tensor> LlamaModel::Forward(const at::Tensor& tokens, ModuleAdapter* adapter,
                                       std::span<const at::Tensor> weights) const try {
  const at::Device device = embed_.device();
  if (!tokens.defined() || tokens.scalar_type() != at::kLong || tokens.dim() != 2 ||
      tokens.device() != device) {
    return InvalidArgument("Forward: tokens must be an int64 tensor [batch, time] on ",
                           device.str(), " (the model's device)");
  }
  const std::int64_t batch = tokens.size(0), time = tokens.size(1);
  if (batch < 1 || time < 1 || time > config_.seq_len) {
    return InvalidArgument("Forward: tokens shape ", ShapeString(tokens.sizes().vec()),
                           " needs batch >= 1 and 1 <= time <= seq_len ", config_.seq_len);
  }
  const std::int64_t lo = tokens.min().item<std::int64_t>();
  const std::int64_t hi = tokens.max().item<std::int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    return InvalidArgument("Forward: token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ",
                           config_.vocab_size, ")");
  }
  if (!weights.empty()) {
    if (weights.size() != modules_.size()) {
      return InvalidArgument("Forward: ", weights.size(), " module weights given for a model with ",
                             modules_.size(), " adaptable modules");
    }
    for (std::size_t i = 0; i < weights.size(); ++i) {
      const at::Tensor& w = weights[i];
      if (!w.defined()) continue;
      if (w.scalar_type() != at::kFloat || w.device() != device ||
          w.sizes() != at::IntArrayRef({modules_[i].d_out, modules_[i].d_in})) {
        return InvalidArgument("Forward: replacement weight of '", modules_[i].name,
                               "' must be a float32 tensor on ", device.str(), " of shape ",
                               ShapeString(std::vector<std::int64_t>{modules_[i].d_out,
                                                                     modules_[i].d_in}),
                               ", got ", ShapeString(w.sizes().vec()));
      }
    }
  }
  return ForwardImpl(tokens, adapter, weights);
} catch (const c10::Error& e) {
  return Internal("Forward: ", e.what_without_backtrace());
}

at::Tensor LlamaModel::ForwardImpl(const at::Tensor& tokens, ModuleAdapter* adapter,
                                   std::span<const at::Tensor> weights) const {
  const std::int64_t batch = tokens.size(0), time = tokens.size(1);
  const std::int64_t hs = config_.head_size(), heads = config_.n_heads, kv = config_.n_kv_heads;
  const std::int64_t group = heads / kv;  // Query heads per kv head.
  const at::Tensor cos = rope_cos_.narrow(0, 0, time);
  const at::Tensor sin = rope_sin_.narrow(0, 0, time);
  // Additive mask: position t attends to positions s <= t (causal) and, with a sliding window W,
  // only to t - s < W. Repeated for the `group` query heads that share a kv head: rows are
  // (g, t) pairs.
  // Built on the tokens' device (the first run on a GPU found it on the CPU).
  const at::TensorOptions flags = at::TensorOptions().dtype(at::kBool).device(tokens.device());
  at::Tensor blocked = at::ones({time, time}, flags).triu(1);
  if (config_.sliding_window > 0 && time > config_.sliding_window) {
    blocked = blocked.logical_or(at::ones({time, time}, flags).tril(-config_.sliding_window));
  }
  const at::Tensor mask = at::zeros({time, time}, flags.dtype(at::kFloat))
                              .masked_fill(blocked, -std::numeric_limits<float>::infinity())
                              .repeat({group, 1});
  const double inv_sqrt_hs = 1.0 / std::sqrt(static_cast<double>(hs));

  std::size_t module_index = 0;
  const auto linear = [&](const at::Tensor& x, const at::Tensor& frozen, const at::Tensor& bias) {
    const bool replaced = module_index < weights.size() && weights[module_index].defined();
    const at::Tensor& w = replaced ? weights[module_index] : frozen;
    at::Tensor y = bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
    if (adapter != nullptr) y = adapter->Adapt(module_index, x, std::move(y));
    ++module_index;
    return y;
  };

  at::Tensor x = at::embedding(embed_, tokens);  // [B, T, dim]
  for (const Layer& layer : layers_) {
    const at::Tensor h = RmsNorm(x, layer.attn_norm, config_.norm_eps);
    const at::Tensor q =
        ApplyRope(linear(h, layer.wq, layer.bq).view({batch, time, heads, hs}), cos, sin);
    const at::Tensor k =
        ApplyRope(linear(h, layer.wk, layer.bk).view({batch, time, kv, hs}), cos, sin);
    const at::Tensor v = linear(h, layer.wv, layer.bv).view({batch, time, kv, hs});
    // GQA without copying k and v per query head: query head i = kv head i / group, so the
    // `group` query heads of one kv head become extra rows against that kv head's keys.
    // [B, T, H, hs] -> [B*KV, group*T, hs]; k and v: [B, T, KV, hs] -> [B*KV, T, hs].
    const at::Tensor q3 = q.view({batch, time, kv, group, hs})
                              .permute({0, 2, 3, 1, 4})
                              .reshape({batch * kv, group * time, hs});
    const at::Tensor k3 = k.transpose(1, 2).reshape({batch * kv, time, hs});
    const at::Tensor v3 = v.transpose(1, 2).reshape({batch * kv, time, hs});
    // softmax(q·kᵀ/√hs + mask)·v; baddbmm fuses the scale and the mask into the product.
    const at::Tensor scores = at::baddbmm(mask, q3, k3.transpose(1, 2), 1.0, inv_sqrt_hs);
    const at::Tensor attn = at::bmm(at::softmax(scores, -1), v3)  // [B*KV, group*T, hs]
                                .view({batch, kv, group, time, hs})
                                .permute({0, 3, 1, 2, 4})
                                .reshape({batch, time, heads * hs});
    x = x + linear(attn, layer.wo, layer.bo);

    const at::Tensor f = RmsNorm(x, layer.ffn_norm, config_.norm_eps);
    const at::Tensor gate = linear(f, layer.w_gate, layer.b_gate);
    const at::Tensor up = linear(f, layer.w_up, layer.b_up);
    x = x + linear(at::silu(gate) * up, layer.w_down, layer.b_down);
  }
  return at::linear(RmsNorm(x, final_norm_, config_.norm_eps), lm_head_);
}

}  // namespace fedlora::client
