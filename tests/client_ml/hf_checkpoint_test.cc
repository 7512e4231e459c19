#include "client/model/hf_checkpoint.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numbers>
#include <sstream>

#include "common/fs.h"
#include "common/safetensors.h"
#include "tests/client_ml/ml_test_util.h"

// The test binary is unity-built: helpers live in this uniquely named namespace.
namespace fedlora::client::hf_checkpoint_test {
namespace {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.
namespace stdfs = std::filesystem;

using ModelPtr = std::shared_ptr<const LlamaModel>;

// Paths FreshPath handed out, removed when the test process exits.
struct ScratchPaths {
  std::vector<std::string> paths;
  ~ScratchPaths() {
    for (const std::string& p : paths) (void)fs::RemoveAll(p);
  }
};

// A fresh path under the test temp dir, private to this process: ctest runs each test in a
// process of its own, several at a time, and they must not share (or delete) each other's
// checkpoints.
std::string FreshPath(const std::string& name) {
  static ScratchPaths scratch;
  const std::string path =
      ::testing::TempDir() + "fedlora_hf_" + std::to_string(::getpid()) + "_" + name;
  FEDLORA_CHECK(fs::RemoveAll(path).ok());
  scratch.paths.push_back(path);
  return path;
}

std::string SaveOrDie(const LlamaModel& model, const std::string& name,
                      DType dtype = DType::kF32, std::span<const at::Tensor> replaced = {}) {
  const std::string dir = FreshPath(name);
  const Status s = SaveHf(model, dir, replaced, dtype);
  FEDLORA_CHECK_MSG(s.ok(), s.ToString());
  return dir;
}

ModelPtr LoadHfOrDie(const std::string& dir, const HfLoadOptions& options = {}) {
  Result<ModelPtr> model = LlamaModel::LoadHf(dir, options);
  FEDLORA_CHECK_MSG(model.ok(), model.status().ToString());
  return std::move(model).value();
}

std::string CopyDir(const std::string& from, const std::string& name) {
  const std::string to = FreshPath(name);
  stdfs::copy(from, to, stdfs::copy_options::recursive);
  return to;
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// Replaces the one occurrence of `from` in file `path` by `to`.
void PatchFile(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = ReadFileBytes(path);
  const std::size_t at = text.find(from);
  FEDLORA_CHECK_MSG(at != std::string::npos && text.find(from, at + 1) == std::string::npos,
                    "'", from, "' is not in ", path, " exactly once");
  text.replace(at, from.size(), to);
  WriteText(path, text);
}

std::map<std::string, at::Tensor> TensorsOf(const LlamaModel& model) {
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& name : model.TensorNames()) tensors[name] = model.Weight(name).clone();
  return tensors;
}

ModelPtr FromTensorsOrDie(const LlamaConfig& config,
                          const std::map<std::string, at::Tensor>& tensors) {
  Result<ModelPtr> model = LlamaModel::FromTensors(config, tensors);
  FEDLORA_CHECK_MSG(model.ok(), model.status().ToString());
  return std::move(model).value();
}

at::Tensor Randn(at::IntArrayRef shape, std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat);
}

// Whether `p` lies inside a mapping of file `path` in this process (/proc/self/maps).
bool IsInsideMappingOf(const void* p, const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  const std::string canonical = stdfs::canonical(path).string();
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  for (std::string line; std::getline(maps, line);) {
    if (!line.ends_with(canonical)) continue;
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream(line) >> std::hex >> begin >> dash >> end;
    if (address >= begin && address < end) return true;
  }
  return false;
}

Status LoadStatus(const std::string& dir) { return LlamaModel::LoadHf(dir).status(); }

// The stories260K model saved once in HF layout (fp32), shared by the malformed-input cases.
const std::string& SavedStories() {
  static const std::string dir = SaveOrDie(Stories260K(), "stories_f32");
  return dir;
}

TEST(HfCheckpointTest, SavedStories260KReloadsWithIdenticalLogitsAndDigest) {
  const std::string dir = SavedStories();
  const ModelPtr hf = LoadHfOrDie(dir);
  EXPECT_EQ(hf->Digest(), Stories260K().Digest());
  EXPECT_EQ(hf->TensorNames(), Stories260K().TensorNames());
  const at::Tensor tokens = RandomTokens(2, 64, 7);
  EXPECT_TRUE(at::equal(ForwardOrDie(*hf, tokens), ForwardOrDie(Stories260K(), tokens)));
  const LlamaConfig& c = hf->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.norm_eps, 1e-5);
  const std::string config = ReadFileBytes(dir + "/config.json");
  EXPECT_THAT(config, HasSubstr(R"("model_type": "llama")"));
  EXPECT_THAT(config, HasSubstr(R"("tie_word_embeddings": true)"));
  const Result<safetensors::File> file = safetensors::Read(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_FALSE(file->tensors.contains("lm_head.weight"));
  EXPECT_EQ(file->metadata.at("format"), "pt");
}

TEST(HfCheckpointTest, AlignedFp32WeightsAreServedFromTheMappingWhileTheModelLives) {
  const std::string file = SavedStories() + "/model.safetensors";
  ModelPtr hf = LoadHfOrDie(SavedStories());
  const void* q = hf->ModuleWeight(0).data_ptr();
  EXPECT_TRUE(IsInsideMappingOf(q, file));
  hf.reset();  // The last tensor over the mapping goes: the file is unmapped.
  EXPECT_FALSE(IsInsideMappingOf(q, file));
}

TEST(HfCheckpointTest, Bf16AndF16FilesWidenExactlyAndStayCloseToFp32Logits) {
  const at::Tensor tokens = RandomTokens(2, 64, 8);
  const at::Tensor reference = ForwardOrDie(Stories260K(), tokens);
  const double max_logit = reference.abs().max().item<double>();  // About 18.
  // Rounding a weight to bf16 (8 significant bits) or f16 (11) changes it by a relative error of
  // at most u = 2^-8 or 2^-11. Those errors, independent across ~1e5 weights and 5 layers, partly
  // cancel: measured, the logits move by about 1.7·u·max|logit| (0.12 for bf16, 0.014 for f16).
  // The bound 6·u·max|logit| leaves 3.5x headroom and stays far below what a wrong conversion or
  // layout does (logits off by whole units).
  for (const auto& [dtype, u] :
       {std::pair{DType::kBF16, 0x1p-8}, std::pair{DType::kF16, 0x1p-11}}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const ModelPtr hf = LoadHfOrDie(SaveOrDie(Stories260K(), "stories_half", dtype));
    // The loader widens exactly: the same model as rounding the fp32 weights in memory.
    std::map<std::string, at::Tensor> rounded;
    const at::ScalarType type = dtype == DType::kBF16 ? at::kBFloat16 : at::kHalf;
    for (const auto& [name, t] : TensorsOf(Stories260K())) {
      rounded[name] = t.to(type).to(at::kFloat);
    }
    const ModelPtr expected = FromTensorsOrDie(Stories260K().config(), rounded);
    EXPECT_EQ(hf->Digest(), expected->Digest());
    const at::Tensor logits = ForwardOrDie(*hf, tokens);
    EXPECT_TRUE(at::equal(logits, ForwardOrDie(*expected, tokens)));
    const double diff = (logits - reference).abs().max().item<double>();
    EXPECT_LT(diff, 6 * u * max_logit);
    EXPECT_GT(diff, 0.0);  // It really was rounded.
  }
}

// Splits model.safetensors of `dir` round-robin into 3 shards plus an index; returns the copy.
std::string ShardIntoThree(const std::string& dir, const std::string& name) {
  const std::string out = CopyDir(dir, name);
  Result<safetensors::File> whole = safetensors::Read(out + "/model.safetensors");
  FEDLORA_CHECK(whole.ok());
  std::vector<TensorMap> shards(3);
  std::string weight_map;
  std::size_t i = 0;
  for (const auto& [tensor, t] : whole->tensors) {
    const std::string shard = StrCat("model-0000", i % 3 + 1, "-of-00003.safetensors");
    shards[i % 3].emplace(tensor, t);
    weight_map += StrCat(weight_map.empty() ? "" : ", ", "\"", tensor, "\": \"", shard, "\"");
    ++i;
  }
  for (std::size_t s = 0; s < 3; ++s) {
    FEDLORA_CHECK(safetensors::Write(StrCat(out, "/model-0000", s + 1, "-of-00003.safetensors"),
                                     shards[s], {{"format", "pt"}}).ok());
  }
  WriteText(out + "/model.safetensors.index.json",
            StrCat(R"({"metadata": {"total_size": 0}, "weight_map": {)", weight_map, "}}"));
  stdfs::remove(out + "/model.safetensors");
  return out;
}

TEST(HfCheckpointTest, ShardedCheckpointLoadsLikeOneFile) {
  const std::string dir = ShardIntoThree(SavedStories(), "sharded");
  const ModelPtr sharded = LoadHfOrDie(dir);
  EXPECT_EQ(sharded->Digest(), Stories260K().Digest());
  const at::Tensor tokens = RandomTokens(1, 32, 9);
  EXPECT_TRUE(at::equal(ForwardOrDie(*sharded, tokens), ForwardOrDie(Stories260K(), tokens)));
}

TEST(HfCheckpointTest, LoadTellsHfDirectoriesFromLlama2cFiles) {
  const Result<ModelPtr> hf = LlamaModel::Load(SavedStories());
  const Result<ModelPtr> c = LlamaModel::Load(LegacyModelPath());
  ASSERT_TRUE(hf.ok()) << hf.status().ToString();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*hf)->Digest(), (*c)->Digest());
  EXPECT_EQ(LlamaModel::Load("/nonexistent/model").status().code(), StatusCode::kNotFound);
}

TEST(HfCheckpointTest, Qwen2StyleBiasesRoundTripAndChangeTheLogits) {
  LlamaConfig config = Stories260K().config();
  config.qkv_bias = true;
  std::map<std::string, at::Tensor> tensors = TensorsOf(Stories260K());
  std::uint64_t seed = 100;
  for (const wire::ModuleInfo& m : Stories260K().AdaptableModules()) {
    if (m.name.ends_with("q_proj") || m.name.ends_with("k_proj") || m.name.ends_with("v_proj")) {
      tensors[m.name + ".bias"] = Randn({m.d_out}, seed++) * 0.5;
    }
  }
  const ModelPtr qwen = FromTensorsOrDie(config, tensors);
  EXPECT_TRUE(qwen->ModuleBias(0).defined());
  EXPECT_FALSE(qwen->ModuleBias(3).defined());  // o_proj: none, as in Qwen2.
  const std::string dir = SaveOrDie(*qwen, "qwen2");
  EXPECT_THAT(ReadFileBytes(dir + "/config.json"), HasSubstr(R"("model_type": "qwen2")"));
  const ModelPtr loaded = LoadHfOrDie(dir);
  EXPECT_TRUE(loaded->config().qkv_bias);
  EXPECT_FALSE(loaded->config().o_bias);
  EXPECT_EQ(loaded->Digest(), qwen->Digest());
  EXPECT_NE(loaded->Digest(), Stories260K().Digest());  // Biases are hashed.
  const at::Tensor tokens = RandomTokens(2, 32, 10);
  const at::Tensor logits = ForwardOrDie(*loaded, tokens);
  EXPECT_TRUE(at::equal(logits, ForwardOrDie(*qwen, tokens)));
  EXPECT_GT((logits - ForwardOrDie(Stories260K(), tokens)).abs().max().item<double>(), 0.1);
}

TEST(HfCheckpointTest, Llama3RopeScalingMatchesTheReferenceFormula) {
  // Llama 3.1 8B's values, written out independently of the implementation, in double.
  const double theta = 500000.0, factor = 8.0, low = 1.0, high = 4.0, original = 8192.0;
  const int head_dim = 128;
  std::vector<double> expected;
  for (int j = 0; j < head_dim / 2; ++j) {
    const double inv = 1.0 / std::pow(theta, 2.0 * j / head_dim);
    const double wavelen = 2.0 * std::numbers::pi / inv;
    if (wavelen < original / high) {
      expected.push_back(inv);
    } else if (wavelen > original / low) {
      expected.push_back(inv / factor);
    } else {
      const double smooth = (original / wavelen - low) / (high - low);
      expected.push_back((1.0 - smooth) * inv / factor + smooth * inv);
    }
  }
  const std::string dir = FreshPath("llama3_config");
  ASSERT_TRUE(fs::MakeDirectories(dir).ok());
  WriteText(dir + "/config.json", R"({"model_type": "llama", "hidden_size": 4096,
      "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
      "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "hidden_act": "silu",
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
  const Result<LlamaConfig> config = ReadHfConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->seq_len, 4096);  // Capped: 131072 positions would be a 64 MiB table per head.
  EXPECT_EQ(config->max_position_embeddings, 131072);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLlama3);
  const std::vector<double> actual = RopeInverseFrequencies(*config);
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t j = 0; j < actual.size(); ++j) {
    EXPECT_NEAR(actual[j], expected[j], 1e-15 * expected[j]) << j;
  }
  // Every band is exercised: kept, divided, and interpolated.
  EXPECT_EQ(actual[0], expected[0]);
  EXPECT_NEAR(actual[63] * factor, 1.0 / std::pow(theta, 126.0 / 128), 1e-18);
  // "linear" divides every frequency.
  LlamaConfig linear = *config;
  linear.rope_scaling = {.type = RopeScaling::Type::kLinear, .factor = 4.0};
  EXPECT_NEAR(RopeInverseFrequencies(linear)[1], 1.0 / std::pow(theta, 2.0 / 128) / 4.0, 1e-15);
}

TEST(HfCheckpointTest, RopeScalingIsUsedByForwardAndSurvivesARoundTrip) {
  LlamaConfig config = Stories260K().config();
  // Head size 8: wavelengths 6.3, 63, 628, 6283 fall in all three llama3 bands for these values.
  config.rope_scaling = {.type = RopeScaling::Type::kLlama3, .factor = 8.0, .low_freq_factor = 1.0,
                         .high_freq_factor = 4.0, .original_max_position_embeddings = 64};
  const ModelPtr scaled = FromTensorsOrDie(config, TensorsOf(Stories260K()));
  const ModelPtr loaded = LoadHfOrDie(SaveOrDie(*scaled, "llama3_small"));
  EXPECT_EQ(loaded->config().rope_scaling.original_max_position_embeddings, 64);
  const at::Tensor tokens = RandomTokens(1, 100, 11);
  const at::Tensor logits = ForwardOrDie(*loaded, tokens);
  EXPECT_TRUE(at::equal(logits, ForwardOrDie(*scaled, tokens)));
  EXPECT_GT((logits - ForwardOrDie(Stories260K(), tokens)).abs().max().item<double>(), 0.01);
}

TEST(HfCheckpointTest, TiedAndUntiedLmHeadBothRoundTrip) {
  LlamaConfig config = Stories260K().config();
  config.shared_classifier = false;
  std::map<std::string, at::Tensor> tensors = TensorsOf(Stories260K());
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + Randn({512, 64}, 5) * 0.1;
  const ModelPtr untied = FromTensorsOrDie(config, tensors);
  const std::string dir = SaveOrDie(*untied, "untied");
  EXPECT_THAT(ReadFileBytes(dir + "/config.json"), HasSubstr(R"("tie_word_embeddings": false)"));
  const ModelPtr loaded = LoadHfOrDie(dir);
  EXPECT_FALSE(loaded->config().shared_classifier);
  EXPECT_EQ(loaded->Digest(), untied->Digest());
  const at::Tensor tokens = RandomTokens(1, 16, 12);
  EXPECT_TRUE(at::equal(ForwardOrDie(*loaded, tokens), ForwardOrDie(*untied, tokens)));

  // Tied: an lm_head.weight in the file is ignored, as transformers ties it anyway.
  const std::string tied = CopyDir(SavedStories(), "tied_with_head");
  Result<safetensors::File> file = safetensors::Read(tied + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  file->tensors["lm_head.weight"] = Zeros(DType::kF32, {512, 64});
  ASSERT_TRUE(safetensors::Write(tied + "/model.safetensors", file->tensors).ok());
  EXPECT_EQ(LoadHfOrDie(tied)->Digest(), Stories260K().Digest());
}

TEST(HfCheckpointTest, ReplacedWeightsAreWrittenInsteadOfTheFrozenOnes) {
  const LlamaModel& base = Stories260K();
  std::vector<at::Tensor> replaced(base.AdaptableModules().size());
  replaced[5] = base.ModuleWeight(5) + Randn(base.ModuleWeight(5).sizes(), 13) * 0.05;
  replaced[30] = base.ModuleWeight(30).to(at::kDouble) * 1.5;  // Any floating dtype.
  const ModelPtr merged = LoadHfOrDie(SaveOrDie(base, "merged", DType::kF32, replaced));
  EXPECT_TRUE(at::equal(merged->ModuleWeight(5), replaced[5]));
  EXPECT_TRUE(at::equal(merged->ModuleWeight(30), replaced[30].to(at::kFloat)));
  EXPECT_TRUE(at::equal(merged->ModuleWeight(6), base.ModuleWeight(6)));
  replaced[30] = replaced[30].to(at::kFloat);
  const at::Tensor tokens = RandomTokens(1, 24, 14);
  const Result<at::Tensor> expected = base.Forward(tokens, nullptr, replaced);
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(at::equal(ForwardOrDie(*merged, tokens), *expected));

  replaced[7] = at::zeros({3, 3});
  const Status s = SaveHf(base, FreshPath("misshapen"), replaced);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(base.AdaptableModules()[7].name));
  EXPECT_EQ(SaveHf(base, FreshPath("too_few"), std::span(replaced).first(3)).code(),
            StatusCode::kInvalidArgument);
}

TEST(HfCheckpointTest, MistralSlidingWindowIsABandOfTheLastWindowPositions) {
  const at::Tensor tokens = RandomTokens(1, 40, 15);
  // Window 1: every position sees only itself, so each logit row is the one-token forward.
  LlamaConfig config = Stories260K().config();
  config.sliding_window = 1;
  const ModelPtr self_only = FromTensorsOrDie(config, TensorsOf(Stories260K()));
  const at::Tensor logits = ForwardOrDie(*self_only, tokens);
  for (std::int64_t t : {0, 1, 17, 39}) {
    const at::Tensor alone = ForwardOrDie(Stories260K(), tokens.narrow(1, t, 1));
    EXPECT_TRUE(at::allclose(logits[0][t], alone[0][0], 0, 1e-4)) << t;
  }
  // Window 6 on one layer: the last position sees exactly the last 6 tokens. Attention depends
  // only on relative positions under RoPE, so it matches a full-attention run on those 6.
  config.n_layers = 1;
  config.sliding_window = 6;
  std::map<std::string, at::Tensor> one_layer;
  for (auto& [name, t] : TensorsOf(Stories260K())) {
    if (!name.starts_with("model.layers.") || name.starts_with("model.layers.0.")) {
      one_layer[name] = t;
    }
  }
  const ModelPtr windowed = FromTensorsOrDie(config, one_layer);
  config.sliding_window = 0;
  const ModelPtr full = FromTensorsOrDie(config, one_layer);
  const at::Tensor banded = ForwardOrDie(*windowed, tokens);
  EXPECT_TRUE(at::allclose(banded[0][39], ForwardOrDie(*full, tokens.narrow(1, 34, 6))[0][5], 0,
                           1e-4));
  EXPECT_FALSE(at::allclose(banded[0][39], ForwardOrDie(*full, tokens)[0][39], 0, 1e-2));
  // Up to the window, nothing differs from full attention.
  EXPECT_TRUE(at::equal(banded.narrow(1, 0, 6), ForwardOrDie(*full, tokens).narrow(1, 0, 6)));

  const std::string dir = SaveOrDie(*windowed, "mistral");
  EXPECT_THAT(ReadFileBytes(dir + "/config.json"), HasSubstr(R"("model_type": "mistral")"));
  const ModelPtr loaded = LoadHfOrDie(dir);
  EXPECT_EQ(loaded->config().sliding_window, 6);
  EXPECT_TRUE(at::equal(ForwardOrDie(*loaded, tokens), banded));
}

TEST(HfCheckpointTest, MaxSeqLenCapsWhatForwardAccepts) {
  const ModelPtr hf = LoadHfOrDie(SavedStories(), {.max_seq_len = 16});
  EXPECT_EQ(hf->config().seq_len, 16);
  EXPECT_EQ(hf->config().max_position_embeddings, 512);
  EXPECT_TRUE(hf->Forward(RandomTokens(1, 16, 1)).ok());
  const Status s = hf->Forward(RandomTokens(1, 17, 1)).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("16"));
  EXPECT_EQ(LlamaModel::LoadHf(SavedStories(), {.compute_dtype = DType::kBF16}).status().code(),
            StatusCode::kUnimplemented);
}

TEST(HfCheckpointTest, MisalignedFp32TensorsAndRotaryBuffersAreHandled) {
  // An old-style F16 rotary buffer (2 bytes, ignored) shifts every later tensor in name order
  // to an address that is not a multiple of 4: those are copied instead of mapped.
  const std::string dir = CopyDir(SavedStories(), "misaligned");
  Result<safetensors::File> file = safetensors::Read(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  file->tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] =
      FromDoubles(DType::kF16, {1}, std::vector<double>{1.0});
  ASSERT_TRUE(safetensors::Write(dir + "/model.safetensors", file->tensors).ok());
  const ModelPtr hf = LoadHfOrDie(dir);
  EXPECT_EQ(hf->Digest(), Stories260K().Digest());
  EXPECT_FALSE(IsInsideMappingOf(hf->Weight("model.norm.weight").data_ptr(),
                                 dir + "/model.safetensors"));
}

struct MalformedCase {
  std::string what;
  std::function<std::string()> make;  // Builds the broken checkpoint; returns its directory.
  StatusCode code;
  std::vector<std::string> mentions;  // Substrings the message must contain.
};

// The stories260K checkpoint with config.json's `from` replaced by `to`.
std::string WithConfig(const std::string& name, const std::string& from, const std::string& to) {
  const std::string dir = CopyDir(SavedStories(), name);
  PatchFile(dir + "/config.json", from, to);
  return dir;
}

// The stories260K checkpoint with its tensors changed by `edit`.
std::string WithTensors(const std::string& name, const std::function<void(TensorMap&)>& edit) {
  const std::string dir = CopyDir(SavedStories(), name);
  Result<safetensors::File> file = safetensors::Read(dir + "/model.safetensors");
  FEDLORA_CHECK(file.ok());
  edit(file->tensors);
  FEDLORA_CHECK(safetensors::Write(dir + "/model.safetensors", file->tensors).ok());
  return dir;
}

TEST(HfCheckpointTest, MalformedCheckpointsGetTheirOwnErrorCodesNamingTheFile) {
  const std::string st = "model.safetensors";
  // model.embed_tokens.weight (512 * 64 floats) comes first in name order, then
  // model.layers.0.input_layernorm.weight (64 floats).
  const std::string norm0 = "[131072,131328]";
  const std::vector<MalformedCase> cases = {
      {"truncated safetensors",
       [&] {
         const std::string dir = CopyDir(SavedStories(), "truncated");
         stdfs::resize_file(dir + "/" + st, stdfs::file_size(dir + "/" + st) - 10);
         return dir;
       },
       StatusCode::kDataLoss, {st, "model.norm.weight"}},
      {"offsets overlap",
       [&] {
         const std::string dir = CopyDir(SavedStories(), "overlap");
         PatchFile(dir + "/" + st, norm0, "[131068,131324]");
         return dir;
       },
       StatusCode::kDataLoss, {st, "model.embed_tokens.weight", "overlap"}},
      {"offsets past the end",
       [&] {
         // model.norm.weight (64 floats) is last in name order and ends the data section;
         // shifting it by 4 bytes (same digit count) makes it end past the file.
         const std::string dir = CopyDir(SavedStories(), "past_end");
         const std::string path = dir + "/" + st;
         std::uint64_t header = 0;
         std::memcpy(&header, ReadFileBytes(path).data(), 8);
         const std::uint64_t end = stdfs::file_size(path) - 8 - header;
         PatchFile(path, StrCat("[", end - 256, ",", end, "]"),
                   StrCat("[", end - 252, ",", end + 4, "]"));
         return dir;
       },
       StatusCode::kDataLoss, {st, "model.norm.weight", "outside"}},
      {"unknown dtype",
       [&] {
         const std::string dir = CopyDir(SavedStories(), "dtype");
         PatchFile(dir + "/" + st, R"("dtype":"F32","shape":[512,64])",
                   R"("dtype":"I32","shape":[512,64])");
         return dir;
       },
       StatusCode::kInvalidArgument, {st, "model.embed_tokens.weight", "I32"}},
      {"missing shard",
       [&] {
         const std::string dir = ShardIntoThree(SavedStories(), "missing_shard");
         stdfs::remove(dir + "/model-00002-of-00003.safetensors");
         return dir;
       },
       StatusCode::kNotFound, {"model.safetensors.index.json", "model-00002-of-00003"}},
      {"shard lacks a tensor of the index",
       [&] {
         // Point model.norm.weight at a shard that does not hold it.
         const std::string dir = ShardIntoThree(SavedStories(), "lacking_shard");
         const std::string index = dir + "/model.safetensors.index.json";
         const std::string key = R"("model.norm.weight": "model-0000)";
         const std::string text = ReadFileBytes(index);
         const char shard = text[text.find(key) + key.size()];
         PatchFile(index, key + shard, key + (shard == '1' ? '2' : '1'));
         return dir;
       },
       StatusCode::kNotFound, {"model.safetensors.index.json", "model.norm.weight"}},
      {"missing tensor",
       [&] { return WithTensors("missing", [](TensorMap& t) { t.erase("model.norm.weight"); }); },
       StatusCode::kNotFound, {st, "model.norm.weight"}},
      {"unexpected tensor",
       [&] {
         return WithTensors("unexpected", [](TensorMap& t) {
           t["model.layers.9.mlp.up_proj.weight"] = Zeros(DType::kF32, {2});
         });
       },
       StatusCode::kInvalidArgument, {st, "model.layers.9.mlp.up_proj.weight"}},
      {"shape disagrees with config.json",
       [&] {
         return WithConfig("shape", R"("intermediate_size": 172)", R"("intermediate_size": 170)");
       },
       StatusCode::kInvalidArgument, {st, "model.layers.0.mlp.down_proj.weight", "[64, 170]"}},
      {"non-finite weight",
       [&] {
         return WithTensors("nan", [](TensorMap& t) {
           const float inf = std::numeric_limits<float>::infinity();
           std::memcpy(t["model.layers.3.mlp.up_proj.weight"].data.data() + 40, &inf, 4);
         });
       },
       StatusCode::kDataLoss, {st, "model.layers.3.mlp.up_proj.weight"}},
      {"model_type", [&] { return WithConfig("gemma", R"("llama")", R"("gemma")"); },
       StatusCode::kUnimplemented, {"config.json", "model_type", "gemma"}},
      {"hidden_act", [&] { return WithConfig("gelu", R"("silu")", R"("gelu")"); },
       StatusCode::kUnimplemented, {"config.json", "hidden_act"}},
      {"rope_scaling type",
       [&] {
         return WithConfig("yarn", R"("rope_scaling": null)",
                           R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})");
       },
       StatusCode::kUnimplemented, {"config.json", "rope_scaling.rope_type", "yarn"}},
      {"key of the wrong type",
       [&] { return WithConfig("string_size", R"("hidden_size": 64)", R"("hidden_size": "64")"); },
       StatusCode::kInvalidArgument, {"config.json", "hidden_size"}},
      {"kv heads not dividing heads",
       [&] {
         return WithConfig("heads", R"("num_attention_heads": 8)", R"("num_attention_heads": 3)");
       },
       StatusCode::kInvalidArgument, {"config.json", "num_key_value_heads"}},
      {"config.json not JSON", [&] { return WithConfig("json", "{", "{{"); },
       StatusCode::kDataLoss, {"config.json"}},
      {"no config.json",
       [&] {
         const std::string dir = CopyDir(SavedStories(), "no_config");
         stdfs::remove(dir + "/config.json");
         return dir;
       },
       StatusCode::kNotFound, {"config.json"}},
      {"no weights",
       [&] {
         const std::string dir = CopyDir(SavedStories(), "no_weights");
         stdfs::remove(dir + "/" + st);
         return dir;
       },
       StatusCode::kNotFound, {"model.safetensors.index.json"}},
      {"no directory", [] { return FreshPath("absent"); }, StatusCode::kNotFound, {"absent"}},
  };
  for (const MalformedCase& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string dir = c.make();
    const Status s = LoadStatus(dir);
    EXPECT_EQ(s.code(), c.code) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(dir)) << "the message names the file";
    for (const std::string& m : c.mentions) EXPECT_THAT(s.message(), HasSubstr(m));
  }
}

TEST(HfCheckpointTest, SaveRefusesAnOccupiedDirectoryAndLeavesNoStagingBehind) {
  const std::string dir = FreshPath("occupied");
  ASSERT_TRUE(fs::MakeDirectories(dir).ok());
  WriteText(dir + "/keep.txt", "mine");
  const Status s = SaveHf(Stories260K(), dir);
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr(dir));
  EXPECT_EQ(ReadFileBytes(dir + "/keep.txt"), "mine");
  // An empty directory is replaced, through a trailing slash too; no staging directory remains.
  const std::string empty = FreshPath("empty_target");
  ASSERT_TRUE(fs::MakeDirectories(empty).ok());
  ASSERT_TRUE(SaveHf(Stories260K(), empty + "/", {}, DType::kBF16).ok());
  EXPECT_TRUE(stdfs::exists(empty + "/config.json"));
  for (const auto& entry : stdfs::directory_iterator(::testing::TempDir())) {
    EXPECT_THAT(entry.path().filename().string(), ::testing::Not(HasSubstr("empty_target.tmp")));
  }
  EXPECT_EQ(SaveHf(Stories260K(), FreshPath("f64"), {}, DType::kF64).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::client::hf_checkpoint_test
