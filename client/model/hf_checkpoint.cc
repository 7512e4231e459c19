// hf_checkpoint.cc — LlamaModel::LoadHf and SaveHf.
//
// config.json keys read (every other key is ignored):
//   model_type                 required: "llama", "mistral" or "qwen2".
//   hidden_act                 "silu" (default "silu").
//   hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
//   max_position_embeddings    required positive integers.
//   num_key_value_heads        default (or null): num_attention_heads.
//   head_dim                   default (or null): hidden_size / num_attention_heads.
//   rms_norm_eps               default 1e-6.
//   rope_theta                 default 10000 (or rope_parameters.rope_theta, transformers 5).
//   rope_scaling               null, or {"rope_type" (or "type"): "default" | "linear" (factor) |
//                              "llama3" (factor, low_freq_factor, high_freq_factor,
//                              original_max_position_embeddings)}; also read from
//                              rope_parameters (transformers 5) when rope_scaling is absent.
//   tie_word_embeddings        default false (the default of all three model types).
//   attention_bias, mlp_bias   llama only, default false: biases on q/k/v/o, on gate/up/down.
//   Qwen2 always has q/k/v biases and no o_proj bias; Mistral has no biases.
//   sliding_window             mistral only: integer or null. Qwen2's sliding_window applies only
//                              with use_sliding_window = true, which is refused.
//   quantization_config        refused (kUnimplemented).
//   torch_dtype / dtype        informational: the safetensors header says each tensor's dtype.
#include "client/model/hf_checkpoint.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <vector>

#include "common/fs.h"
#include "common/safetensors.h"

namespace fedlora::client {
namespace {
// Unity builds put this file in one translation unit with llama.cc: a named inner namespace
// keeps these helpers from colliding with llama.cc's anonymous ones.
namespace hf_checkpoint_internal {

using safetensors::JsonLeaf;
using safetensors::JsonLeaves;
using TensorFiles = std::map<std::string, std::string, std::less<>>;

// Typed access to config.json's flattened keys; every error names the file and the key.
class ConfigKeys {
 public:
  ConfigKeys(const JsonLeaves& leaves, const std::string& path) : leaves_(leaves), path_(path) {}

  // The leaf at `key`, or nullptr when absent or null.
  const JsonLeaf* Find(std::string_view key) const {
    const auto it = leaves_.find(key);
    return it == leaves_.end() || it->second.kind == JsonLeaf::Kind::kNull ? nullptr : &it->second;
  }
  // True when `prefix` is an object with at least one key.
  bool HasObject(std::string_view prefix) const {
    const auto it = leaves_.lower_bound(StrCat(prefix, "."));
    return it != leaves_.end() && it->first.starts_with(StrCat(prefix, "."));
  }

  Result<std::string> String(std::string_view key, std::optional<std::string> fallback) const {
    const JsonLeaf* leaf = Find(key);
    if (leaf == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    if (leaf->kind != JsonLeaf::Kind::kString) return WrongType(key, "a string");
    return leaf->text;
  }
  // A positive integer (JSON integer, or a number with an integral value such as 4096.0).
  Result<std::int64_t> Positive(std::string_view key, std::optional<std::int64_t> fallback) const {
    const JsonLeaf* leaf = Find(key);
    if (leaf == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    std::int64_t v = leaf->integer;
    if (leaf->kind == JsonLeaf::Kind::kNumber && std::abs(leaf->number) < 9e15 &&
        leaf->number == std::floor(leaf->number)) {
      v = static_cast<std::int64_t>(leaf->number);
    } else if (leaf->kind != JsonLeaf::Kind::kInteger) {
      return WrongType(key, "a positive integer");
    }
    if (v <= 0) return InvalidArgument("'", path_, "': key ", key, " = ", v, " must be >= 1");
    return v;
  }
  // A finite number > 0.
  Result<double> PositiveNumber(std::string_view key, std::optional<double> fallback) const {
    const JsonLeaf* leaf = Find(key);
    if (leaf == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    if (leaf->kind != JsonLeaf::Kind::kInteger && leaf->kind != JsonLeaf::Kind::kNumber) {
      return WrongType(key, "a number");
    }
    if (!(leaf->number > 0.0) || !std::isfinite(leaf->number)) {
      return InvalidArgument("'", path_, "': key ", key, " = ", leaf->number, " must be > 0");
    }
    return leaf->number;
  }
  Result<bool> Bool(std::string_view key, bool fallback) const {
    const JsonLeaf* leaf = Find(key);
    if (leaf == nullptr) return fallback;
    if (leaf->kind != JsonLeaf::Kind::kBool) return WrongType(key, "true or false");
    return leaf->boolean;
  }

  Status Missing(std::string_view key) const {
    return InvalidArgument("'", path_, "': required key ", key, " is missing");
  }
  Status WrongType(std::string_view key, std::string_view want) const {
    return InvalidArgument("'", path_, "': key ", key, " must be ", want);
  }
  const std::string& path() const { return path_; }

 private:
  const JsonLeaves& leaves_;
  const std::string& path_;
};

Result<RopeScaling> ReadRopeScaling(const ConfigKeys& keys, std::string_view prefix) {
  RopeScaling r;
  if (!keys.HasObject(prefix)) return r;
  const std::string type_key =
      keys.Find(StrCat(prefix, ".rope_type")) != nullptr ? StrCat(prefix, ".rope_type")
                                                         : StrCat(prefix, ".type");
  FEDLORA_ASSIGN_OR_RETURN(const std::string type, keys.String(type_key, std::nullopt));
  if (type == "default") return r;
  if (type != "linear" && type != "llama3") {
    return Unimplemented("'", keys.path(), "': key ", type_key, " = \"", type,
                         "\" is not supported (supported: default, linear, llama3)");
  }
  FEDLORA_ASSIGN_OR_RETURN(r.factor, keys.PositiveNumber(StrCat(prefix, ".factor"), std::nullopt));
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
    return r;
  }
  r.type = RopeScaling::Type::kLlama3;
  FEDLORA_ASSIGN_OR_RETURN(r.low_freq_factor,
                           keys.PositiveNumber(StrCat(prefix, ".low_freq_factor"), std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(r.high_freq_factor,
                           keys.PositiveNumber(StrCat(prefix, ".high_freq_factor"), std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(
      r.original_max_position_embeddings,
      keys.Positive(StrCat(prefix, ".original_max_position_embeddings"), std::nullopt));
  if (r.high_freq_factor <= r.low_freq_factor) {
    return InvalidArgument("'", keys.path(), "': ", prefix, ".high_freq_factor (",
                           r.high_freq_factor, ") must exceed low_freq_factor (",
                           r.low_freq_factor, ")");
  }
  return r;
}

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return at::kFloat;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF16: return at::kHalf;
    case DType::kF64: return at::kDouble;
    case DType::kU32: break;  // Not a safetensors tag FromTag reads.
  }
  return at::kFloat;
}

// A float32 CPU tensor holding `view`'s values. Aligned float32 data is used in place: the
// tensor's deleter holds `file`, so the mapping lives as long as any tensor over it. Anything
// else is copied (and widened).
at::Tensor ToFloatTensor(const safetensors::TensorView& view,
                         const std::shared_ptr<const safetensors::MappedFile>& file) {
  // The mapping is PROT_READ: writing through this tensor would fault, which is what a write to
  // a frozen weight deserves (the model promises immutability).
  void* data = const_cast<std::byte*>(view.data.data());
  const bool aligned = reinterpret_cast<std::uintptr_t>(data) % alignof(float) == 0;
  if (view.dtype == DType::kF32 && aligned) {
    return at::from_blob(
        data, view.shape, [file](void*) {}, at::TensorOptions().dtype(at::kFloat));
  }
  at::Tensor raw = at::empty(view.shape, at::TensorOptions().dtype(ToScalarType(view.dtype)));
  if (!view.data.empty()) std::memcpy(raw.data_ptr(), view.data.data(), view.data.size());
  return raw.to(at::kFloat);
}

bool IsIgnoredTensor(std::string_view name, const LlamaConfig& config) {
  // Old HF Llama checkpoints stored the RoPE buffer; transformers ignores it, and so do we.
  if (name.ends_with(".rotary_emb.inv_freq")) return true;
  // transformers ties lm_head to the embedding whatever the file holds.
  return config.shared_classifier && name == "lm_head.weight";
}

std::string FormatDouble(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // Shortest round-trip form.
  // JSON has no "inf"/"nan"; ValidateLlamaConfig keeps them out of every model.
  return std::string(buf, end);
}

std::string_view TorchDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    case DType::kF64: return "float64";
    case DType::kU32: break;
  }
  return "float32";
}

// `dir` without "." segments or trailing separators ("out/" -> "out").
std::filesystem::path NormalDir(const std::string& dir) {
  std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

}  // namespace hf_checkpoint_internal
}  // namespace

Result<LlamaConfig> ReadHfConfig(const std::string& path, const HfLoadOptions& options) {
  using namespace hf_checkpoint_internal;  // NOLINT: this file's helpers.
  if (options.max_seq_len < 1) {
    return InvalidArgument("HfLoadOptions.max_seq_len = ", options.max_seq_len, " must be >= 1");
  }
  FEDLORA_ASSIGN_OR_RETURN(const JsonLeaves leaves, safetensors::ReadJsonLeaves(path));
  const ConfigKeys keys(leaves, path);
  FEDLORA_ASSIGN_OR_RETURN(const std::string model_type, keys.String("model_type", std::nullopt));
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2") {
    return Unimplemented("'", path, "': key model_type = \"", model_type,
                         "\" is not supported (supported: llama, mistral, qwen2)");
  }
  FEDLORA_ASSIGN_OR_RETURN(const std::string act, keys.String("hidden_act", "silu"));
  if (act != "silu") {
    return Unimplemented("'", path, "': key hidden_act = \"", act,
                         "\" is not supported (only silu, the SwiGLU of Llama-family models)");
  }
  if (keys.HasObject("quantization_config")) {
    return Unimplemented("'", path, "': key quantization_config: quantized checkpoints are not ",
                         "supported (hint: load an fp32, bf16 or fp16 checkpoint)");
  }

  LlamaConfig c;
  FEDLORA_ASSIGN_OR_RETURN(c.dim, keys.Positive("hidden_size", std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(c.hidden_dim, keys.Positive("intermediate_size", std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(c.n_layers, keys.Positive("num_hidden_layers", std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(c.n_heads, keys.Positive("num_attention_heads", std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(c.n_kv_heads, keys.Positive("num_key_value_heads", c.n_heads));
  FEDLORA_ASSIGN_OR_RETURN(c.head_dim, keys.Positive("head_dim", std::int64_t{0}));
  FEDLORA_ASSIGN_OR_RETURN(c.vocab_size, keys.Positive("vocab_size", std::nullopt));
  FEDLORA_ASSIGN_OR_RETURN(c.max_position_embeddings,
                           keys.Positive("max_position_embeddings", std::nullopt));
  c.seq_len = std::min(c.max_position_embeddings, options.max_seq_len);
  FEDLORA_ASSIGN_OR_RETURN(c.norm_eps, keys.PositiveNumber("rms_norm_eps", 1e-6));
  const bool v5_rope = !keys.HasObject("rope_scaling") && keys.HasObject("rope_parameters");
  const double theta_default = 10000.0;
  if (v5_rope && keys.Find("rope_theta") == nullptr) {
    FEDLORA_ASSIGN_OR_RETURN(c.rope_theta,
                             keys.PositiveNumber("rope_parameters.rope_theta", theta_default));
  } else {
    FEDLORA_ASSIGN_OR_RETURN(c.rope_theta, keys.PositiveNumber("rope_theta", theta_default));
  }
  FEDLORA_ASSIGN_OR_RETURN(c.rope_scaling,
                           ReadRopeScaling(keys, v5_rope ? "rope_parameters" : "rope_scaling"));
  FEDLORA_ASSIGN_OR_RETURN(c.shared_classifier, keys.Bool("tie_word_embeddings", false));
  if (model_type == "llama") {
    FEDLORA_ASSIGN_OR_RETURN(const bool attention_bias, keys.Bool("attention_bias", false));
    c.qkv_bias = c.o_bias = attention_bias;
    FEDLORA_ASSIGN_OR_RETURN(c.mlp_bias, keys.Bool("mlp_bias", false));
  } else if (model_type == "qwen2") {
    c.qkv_bias = true;
    FEDLORA_ASSIGN_OR_RETURN(const bool sliding, keys.Bool("use_sliding_window", false));
    if (sliding) {
      return Unimplemented("'", path, "': key use_sliding_window = true is not supported for ",
                           "qwen2 (its window applies to only some layers)");
    }
  } else {  // mistral
    FEDLORA_ASSIGN_OR_RETURN(c.sliding_window, keys.Positive("sliding_window", std::int64_t{0}));
  }

  // Relations between keys, named as config.json names them.
  if (c.n_heads > c.dim) {
    return InvalidArgument("'", path, "': num_attention_heads ", c.n_heads,
                           " exceeds hidden_size ", c.dim);
  }
  if (c.head_dim == 0 && c.dim % c.n_heads != 0) {
    return InvalidArgument("'", path, "': num_attention_heads ", c.n_heads,
                           " does not divide hidden_size ", c.dim, " and head_dim is not given");
  }
  if (c.head_size() % 2 != 0) {
    return InvalidArgument("'", path, "': head_dim ", c.head_size(), " is odd (RoPE needs pairs)");
  }
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    return InvalidArgument("'", path, "': num_key_value_heads ", c.n_kv_heads,
                           " does not divide num_attention_heads ", c.n_heads);
  }
  // Whatever is left (size limits, ...) in the model's own terms.
  FEDLORA_RETURN_IF_ERROR(ValidateLlamaConfig(c, path));
  return c;
}

Result<std::shared_ptr<const LlamaModel>> LlamaModel::LoadHf(const std::string& dir,
                                                             const HfLoadOptions& options) try {
  using namespace hf_checkpoint_internal;  // NOLINT: this file's helpers.
  if (options.compute_dtype != DType::kF32) {
    return Unimplemented("LoadHf '", dir, "': compute dtype ", DTypeName(options.compute_dtype),
                         " is not implemented (only f32)");
  }
  namespace stdfs = std::filesystem;
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) {
    return NotFound("Hugging Face checkpoint '", dir, "' is not a directory");
  }
  FEDLORA_ASSIGN_OR_RETURN(const LlamaConfig config,
                           ReadHfConfig((stdfs::path(dir) / "config.json").string(), options));

  // name -> (file, view). `files` keeps every mapping open until the tensors hold them.
  std::vector<std::shared_ptr<const safetensors::MappedFile>> files;
  std::map<std::string, std::pair<std::size_t, const safetensors::TensorView*>> located;
  const std::string single = (stdfs::path(dir) / "model.safetensors").string();
  const std::string index_path = (stdfs::path(dir) / "model.safetensors.index.json").string();
  std::string source;  // What a missing tensor is reported against.
  if (stdfs::exists(single, ec)) {
    source = single;
    FEDLORA_ASSIGN_OR_RETURN(auto file, safetensors::MappedFile::Open(single));
    for (const auto& [name, view] : file->tensors()) located.emplace(name, std::pair(0, &view));
    files.push_back(std::move(file));
  } else if (stdfs::exists(index_path, ec)) {
    source = index_path;
    FEDLORA_ASSIGN_OR_RETURN(const safetensors::ShardIndex index,
                             safetensors::ReadShardIndex(index_path));
    std::map<std::string, std::size_t, std::less<>> shard_number;  // Each shard opened once.
    for (const auto& [name, shard] : index) {
      auto [it, added] = shard_number.emplace(shard, files.size());
      if (added) {
        const std::string shard_path = (stdfs::path(dir) / shard).string();
        Result<std::shared_ptr<const safetensors::MappedFile>> file =
            safetensors::MappedFile::Open(shard_path);
        if (!file.ok()) {
          return Status(file.status().code(),
                        StrCat("index '", index_path, "' puts tensor '", name, "' in shard '",
                               shard, "': ", file.status().message()));
        }
        files.push_back(std::move(file).value());
      }
      const safetensors::TensorView* view = files[it->second]->Find(name);
      if (view == nullptr) {
        return NotFound("index '", index_path, "' puts tensor '", name, "' in shard '",
                        files[it->second]->path(), "', which does not hold it");
      }
      located.emplace(name, std::pair(it->second, view));
    }
  } else if (stdfs::exists(stdfs::path(dir) / "pytorch_model.bin", ec)) {
    return Unimplemented("'", dir, "' holds pytorch_model.bin, a pickle, which is not read ",
                         "(hint: convert it to model.safetensors)");
  } else {
    return NotFound("'", dir, "' holds neither model.safetensors nor ",
                    "model.safetensors.index.json");
  }

  std::map<std::string, at::Tensor> tensors;
  TensorFiles tensor_files;
  for (const auto& [name, where] : located) {
    if (IsIgnoredTensor(name, config)) continue;
    tensors.emplace(name, ToFloatTensor(*where.second, files[where.first]));
    tensor_files.emplace(name, files[where.first]->path());
  }
  return Build(config, std::move(tensors), source, &tensor_files);
} catch (const c10::Error& e) {
  return Internal("loading Hugging Face checkpoint '", dir, "': ", e.what_without_backtrace());
}

Result<std::string> HfConfigJson(const LlamaConfig& c, DType dtype) {
  using namespace hf_checkpoint_internal;  // NOLINT: this file's helpers.
  std::string model_type = "llama";
  std::string architecture = "LlamaForCausalLM";
  if (c.qkv_bias && !c.o_bias && !c.mlp_bias && c.sliding_window == 0) {
    model_type = "qwen2";
    architecture = "Qwen2ForCausalLM";
  } else if (c.qkv_bias != c.o_bias || (c.sliding_window > 0 && (c.qkv_bias || c.mlp_bias))) {
    return Unimplemented("no Hugging Face model_type has biases on q/k/v ",
                         c.qkv_bias ? "but" : "and", " ", c.o_bias ? "" : "not ", "on o_proj",
                         c.mlp_bias ? ", on the MLP" : "",
                         c.sliding_window > 0 ? " and a sliding window" : "");
  } else if (c.sliding_window > 0) {
    model_type = "mistral";
    architecture = "MistralForCausalLM";
  }
  std::string rope_scaling = "null";
  if (c.rope_scaling.type == RopeScaling::Type::kLinear) {
    rope_scaling = StrCat(R"({"rope_type": "linear", "factor": )",
                          FormatDouble(c.rope_scaling.factor), "}");
  } else if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    const RopeScaling& r = c.rope_scaling;
    rope_scaling = StrCat(R"({"rope_type": "llama3", "factor": )", FormatDouble(r.factor),
                          R"(, "low_freq_factor": )", FormatDouble(r.low_freq_factor),
                          R"(, "high_freq_factor": )", FormatDouble(r.high_freq_factor),
                          R"(, "original_max_position_embeddings": )",
                          r.original_max_position_embeddings, "}");
  }
  const auto boolean = [](bool b) { return b ? "true" : "false"; };
  std::string json = StrCat(
      "{\n", R"(  "architectures": [")", architecture, "\"],\n",
      R"(  "model_type": ")", model_type, "\",\n",
      R"(  "hidden_act": "silu",)", "\n",
      R"(  "hidden_size": )", c.dim, ",\n",
      R"(  "intermediate_size": )", c.hidden_dim, ",\n",
      R"(  "num_hidden_layers": )", c.n_layers, ",\n",
      R"(  "num_attention_heads": )", c.n_heads, ",\n",
      R"(  "num_key_value_heads": )", c.n_kv_heads, ",\n",
      R"(  "head_dim": )", c.head_size(), ",\n",
      R"(  "vocab_size": )", c.vocab_size, ",\n",
      R"(  "max_position_embeddings": )",
      c.max_position_embeddings > 0 ? c.max_position_embeddings : c.seq_len, ",\n",
      R"(  "rms_norm_eps": )", FormatDouble(c.norm_eps), ",\n",
      R"(  "rope_theta": )", FormatDouble(c.rope_theta), ",\n",
      R"(  "rope_scaling": )", rope_scaling, ",\n",
      R"(  "tie_word_embeddings": )", boolean(c.shared_classifier), ",\n");
  if (model_type == "llama") {
    json += StrCat(R"(  "attention_bias": )", boolean(c.qkv_bias), ",\n",
                   R"(  "mlp_bias": )", boolean(c.mlp_bias), ",\n");
  } else if (model_type == "qwen2") {
    json += StrCat(R"(  "use_sliding_window": false,)", "\n");
  } else {
    json += StrCat(R"(  "sliding_window": )", c.sliding_window, ",\n");
  }
  json += StrCat(R"(  "torch_dtype": ")", TorchDtypeName(dtype), "\"\n}\n");
  return json;
}

Status SaveHf(const LlamaModel& model, const std::string& dir,
              std::span<const at::Tensor> replaced_weights, DType dtype) try {
  using namespace hf_checkpoint_internal;  // NOLINT: this file's helpers.
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return InvalidArgument("SaveHf '", dir, "': dtype ", DTypeName(dtype),
                           " is not one of f32, bf16, f16");
  }
  const std::vector<wire::ModuleInfo>& modules = model.AdaptableModules();
  if (!replaced_weights.empty() && replaced_weights.size() != modules.size()) {
    return InvalidArgument("SaveHf '", dir, "': ", replaced_weights.size(),
                           " replacement weights for a model with ", modules.size(),
                           " adaptable modules");
  }
  std::map<std::string, at::Tensor, std::less<>> replaced;  // Tensor name -> replacement.
  for (std::size_t i = 0; i < replaced_weights.size(); ++i) {
    const at::Tensor& w = replaced_weights[i];
    if (!w.defined()) continue;
    if (!at::isFloatingType(w.scalar_type()) ||
        w.sizes() != at::IntArrayRef({modules[i].d_out, modules[i].d_in})) {
      return InvalidArgument("SaveHf '", dir, "': replacement weight of '", modules[i].name,
                             "' must be a floating tensor of shape ",
                             ShapeString(std::vector<std::int64_t>{modules[i].d_out,
                                                                   modules[i].d_in}),
                             ", got ", ShapeString(w.sizes().vec()));
    }
    if (!at::isfinite(w).all().item<bool>()) {
      return InvalidArgument("SaveHf '", dir, "': replacement weight of '", modules[i].name,
                             "' holds NaN or infinity");
    }
    replaced.emplace(StrCat(modules[i].name, ".weight"), w);
  }
  FEDLORA_ASSIGN_OR_RETURN(const std::string config_json, HfConfigJson(model.config(), dtype));

  namespace stdfs = std::filesystem;
  std::error_code ec;
  if (stdfs::exists(dir, ec) && !(stdfs::is_directory(dir, ec) && stdfs::is_empty(dir, ec))) {
    return MakeStatus(StatusCode::kAlreadyExists, "SaveHf: '", dir,
                      "' already exists and is not an empty directory");
  }
  // A sibling of `dir`, so the final rename stays within one filesystem.
  const std::string staging = StrCat(NormalDir(dir).string(), ".tmp.", ::getpid());
  FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(staging));  // Left over from a crashed save.
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(staging));
  const auto write = [&]() -> Status {
    safetensors::TensorSpecs specs;
    for (const std::string& name : model.TensorNames()) {
      specs.emplace(name, TensorSpec{dtype, model.Weight(name).sizes().vec()});
    }
    const at::ScalarType type = ToScalarType(dtype);
    at::Tensor current;  // Holds the bytes handed out until the next fetch.
    const auto fetch = [&](const std::string& name) -> Result<std::span<const std::byte>> {
      const auto it = replaced.find(name);
      const at::Tensor& source = it != replaced.end() ? it->second : model.Weight(name);
      current = source.detach().to(at::kCPU).to(type).contiguous();
      return std::span<const std::byte>(static_cast<const std::byte*>(current.data_ptr()),
                                        static_cast<std::size_t>(current.nbytes()));
    };
    FEDLORA_RETURN_IF_ERROR(safetensors::WriteSyncedStreaming(
        (stdfs::path(staging) / "model.safetensors").string(), specs, fetch, {{"format", "pt"}}));
    FEDLORA_RETURN_IF_ERROR(
        fs::WriteFileSynced((stdfs::path(staging) / "config.json").string(), config_json));
    return fs::CommitDirectory(staging, NormalDir(dir).string());
  };
  const Status s = write();
  if (!s.ok()) (void)fs::RemoveAll(staging);
  return s;
} catch (const c10::Error& e) {
  return Internal("SaveHf '", dir, "': ", e.what_without_backtrace());
}

}  // namespace fedlora::client
