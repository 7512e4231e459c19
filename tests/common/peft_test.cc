// PEFT adapter directories: the exact format PEFT's save_pretrained writes, round trips, folding
// of base corrections and Fed-SB factors (checked densely in f64 with d_out != d_in), and
// malformed inputs that must fail with the right code and name the file and key at fault.
#include "common/lora/peft.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "common/fs.h"
#include "common/lora/adapter_layout.h"
#include "common/safetensors.h"

namespace fedlora::lora {
namespace {

const std::string kQ = "model.layers.0.self_attn.q_proj";  // d_out 6, d_in 4
const std::string kUp = "model.layers.0.mlp.up_proj";      // d_out 9, d_in 5
const std::string kV = "model.layers.1.self_attn.v_proj";  // d_out 3, d_in 7

class PeftTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_peft_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Tensor Random(std::int64_t rows, std::int64_t cols, DType dtype = DType::kF32) {
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<double> v(static_cast<std::size_t>(rows * cols));
    for (double& x : v) x = normal(rng_);
    return FromDoubles(dtype, {rows, cols}, v);
  }
  // Our adapter representation: module -> (d_out, d_in, rank).
  TensorMap Adapter(const std::vector<std::tuple<std::string, int, int, int>>& modules,
                    DType dtype = DType::kF32) {
    TensorMap t;
    for (const auto& [module, d_out, d_in, r] : modules) {
      t[LoraAName(module)] = Random(r, d_in, dtype);
      t[LoraBName(module)] = Random(d_out, r, dtype);
    }
    return t;
  }
  nlohmann::json Config(const std::string& dir) const {
    return nlohmann::json::parse(fs::ReadFile(dir + "/adapter_config.json").value());
  }
  void WriteConfig(const std::string& dir, const nlohmann::json& j) const {
    ASSERT_TRUE(fs::WriteFileAtomic(dir + "/adapter_config.json", j.dump(2)).ok());
  }

  std::string dir_;
  std::mt19937_64 rng_{7};
};

// Row-major x (n x k) * y (k x m) * scale, in f64.
std::vector<double> Product(const Tensor& x, const Tensor& y, double scale = 1.0) {
  const std::vector<double> xv = ToDoubles(x), yv = ToDoubles(y);
  const std::int64_t n = x.shape[0], k = x.shape[1], m = y.shape[1];
  std::vector<double> out(static_cast<std::size_t>(n * m), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t p = 0; p < k; ++p)
      for (std::int64_t j = 0; j < m; ++j) out[i * m + j] += scale * xv[i * k + p] * yv[p * m + j];
  return out;
}

double MaxAbsDiff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

const wire::LoraSpec kSpec{
    .rank = 4, .alpha = 8, .dropout = 0.05, .rslora = false, .targets = {"q_proj", "up_proj"}};

TEST_F(PeftTest, ExportThenImportIsBitExact) {
  const TensorMap ours = Adapter({{kQ, 6, 4, 4}, {kUp, 9, 5, 4}});
  const PeftAdapter peft = PeftFromAdapter(ours, kSpec, "org/base-model").value();
  ASSERT_TRUE(ExportPeft(dir_ + "/adapter", peft).ok());
  const Result<PeftAdapter> back = ImportPeft(dir_ + "/adapter");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, peft);
  const LoraAdapterValue value = AdapterFromPeft(*back).value();
  EXPECT_EQ(value.tensors, ours);
  EXPECT_EQ(value.spec, kSpec);
  // Nothing left next to the adapter: the staging directory was renamed into place.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
}

TEST_F(PeftTest, WritesTheKeysAndConfigThatPeftSavePretrainedWrites) {
  const PeftAdapter peft =
      PeftFromAdapter(Adapter({{kQ, 6, 4, 4}, {kUp, 9, 5, 4}}), kSpec, "org/base-model").value();
  ASSERT_TRUE(ExportPeft(dir_, peft).ok());
  const std::string text = fs::ReadFile(dir_ + "/adapter_config.json").value();
  // json.dumps(indent=2, sort_keys=True): sorted keys, two-space indent, no trailing newline.
  EXPECT_TRUE(text.starts_with("{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n")) << text;
  EXPECT_TRUE(text.ends_with("\n}")) << text;
  const nlohmann::json c = nlohmann::json::parse(text);
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["task_type"], "CAUSAL_LM");
  EXPECT_TRUE(c["r"].is_number_integer());
  EXPECT_EQ(c["r"], 4);
  EXPECT_TRUE(c["lora_alpha"].is_number_integer());
  EXPECT_EQ(c["lora_alpha"], 8);
  EXPECT_EQ(c["lora_dropout"], 0.05);
  EXPECT_EQ(c["target_modules"], nlohmann::json::array({"q_proj", "up_proj"}));
  EXPECT_EQ(c["use_rslora"], false);
  EXPECT_EQ(c["bias"], "none");
  EXPECT_EQ(c["fan_in_fan_out"], false);
  EXPECT_EQ(c["init_lora_weights"], true);
  EXPECT_EQ(c["base_model_name_or_path"], "org/base-model");
  EXPECT_EQ(c["inference_mode"], true);
  EXPECT_TRUE(c["modules_to_save"].is_null());
  EXPECT_EQ(c["rank_pattern"], nlohmann::json::object());
  EXPECT_EQ(c["alpha_pattern"], nlohmann::json::object());
  EXPECT_TRUE(c["revision"].is_null());
  EXPECT_EQ(c["use_dora"], false);
  EXPECT_EQ(c["lora_bias"], false);
  EXPECT_EQ(c["megatron_core"], "megatron.core");
  EXPECT_EQ(c["loftq_config"], nlohmann::json::object());

  const safetensors::File file = safetensors::Read(dir_ + "/adapter_model.safetensors").value();
  EXPECT_EQ(file.metadata.at("format"), "pt");
  std::vector<std::string> keys;
  for (const auto& [name, t] : file.tensors) keys.push_back(name);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
                      "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
                      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"}));
  const Tensor& b =
      file.tensors.at("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  EXPECT_EQ(b.dtype, DType::kF32);
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{6, 4}));
}

TEST_F(PeftTest, HeterogeneousRanksRoundTripThroughRankPatternWithTheSameScale) {
  for (const bool rslora : {false, true}) {
    wire::LoraSpec spec = kSpec;
    spec.rslora = rslora;
    const TensorMap ours = Adapter({{kQ, 6, 4, 4}, {kUp, 9, 5, 2}, {kV, 3, 7, 1}});
    const PeftAdapter peft = PeftFromAdapter(ours, spec).value();
    const std::string dir = dir_ + (rslora ? "/rs" : "/plain");
    ASSERT_TRUE(ExportPeft(dir, peft).ok());
    const nlohmann::json c = Config(dir);
    EXPECT_EQ(c["r"], 4);
    EXPECT_EQ(c["rank_pattern"], (nlohmann::json{{kUp, 2}, {kV, 1}}));
    ASSERT_EQ(c["alpha_pattern"].size(), 2u);
    const PeftAdapter back = ImportPeft(dir).value();
    EXPECT_EQ(back, peft);
    for (const std::string& m : {kQ, kUp, kV}) {
      // PEFT's alpha_m / r_m (or / sqrt(r_m)) is our one scale, to rounding.
      EXPECT_NEAR(back.ScaleOf(m), Scale(spec), 1e-15 * Scale(spec)) << m;
    }
    EXPECT_EQ(AdapterFromPeft(back).value().tensors, ours);
  }
}

TEST_F(PeftTest, CorrectionsFoldIntoAdapterExactly) {
  // A FedEx-style global adapter (scale 2) plus cumulative base corrections: a low-rank pair, a
  // dense delta, and a module known only from its correction (FLoRA has no global adapter).
  const TensorMap ours = Adapter({{kQ, 6, 4, 4}, {kUp, 9, 5, 4}}, DType::kF64);
  const PeftAdapter peft = PeftFromAdapter(ours, kSpec, "", DType::kF64).value();
  PeftCorrections corrections;
  const PeftCorrection first{Random(6, 2, DType::kF64), Random(2, 4, DType::kF64)};
  const PeftCorrection second{Random(6, 1, DType::kF64), Random(1, 4, DType::kF64)};
  corrections[kQ] = StackCorrections(std::vector{first, second}, kQ).value();
  corrections[kUp] = DenseAsFactors(Random(9, 5, DType::kF64)).value();
  corrections[kV] = PeftCorrection{Random(3, 5, DType::kF64), Random(5, 7, DType::kF64)};

  const PeftAdapter folded = FoldCorrections(peft, corrections, DType::kF64).value();
  const std::map<std::string, std::int64_t> want_rank = {{kQ, 4 + 3}, {kUp, 4 + 5}, {kV, 5}};
  for (const auto& [m, rank] : want_rank) {
    const PeftFactors& f = folded.modules.at(m);
    EXPECT_EQ(f.a.shape[0], rank) << m;
    EXPECT_EQ(folded.RankOf(m), rank) << m;
    EXPECT_EQ(folded.ScaleOf(m), 1.0) << m;
    // W + U V + s B A, densely, against what PEFT computes from the exported adapter.
    std::vector<double> want = Product(corrections.at(m).u, corrections.at(m).v);
    if (ours.contains(LoraAName(m))) {
      const std::vector<double> ba = Product(ours.at(LoraBName(m)), ours.at(LoraAName(m)), 2.0);
      for (std::size_t i = 0; i < want.size(); ++i) want[i] += ba[i];
    }
    EXPECT_LT(MaxAbsDiff(Product(f.b, f.a, folded.ScaleOf(m)), want), 1e-10) << m;
  }

  // Exported in f32: every factor is rounded once (relative error <= u = 2^-24), so each entry
  // of B'A' is off by at most about 2u * sum_k |B'_ik| |A'_kj|; the check uses 2.5u for the
  // f64 accumulation's own rounding.
  ASSERT_TRUE(ExportPeft(dir_ + "/f32", peft, {.corrections = corrections}).ok());
  const PeftAdapter f32 = ImportPeft(dir_ + "/f32").value();
  EXPECT_EQ(f32.rank_pattern, folded.rank_pattern);
  const double u = std::ldexp(1.0, -24);
  for (const auto& [m, f] : folded.modules) {
    const PeftFactors& g = f32.modules.at(m);
    EXPECT_EQ(g.a.dtype, DType::kF32);
    const std::vector<double> exact = Product(f.b, f.a);
    const std::vector<double> got = Product(g.b, g.a, f32.ScaleOf(m));
    std::vector<double> bv = ToDoubles(f.b), av = ToDoubles(f.a);
    for (double& x : bv) x = std::abs(x);
    for (double& x : av) x = std::abs(x);
    const std::vector<double> bound = Product(FromDoubles(DType::kF64, f.b.shape, bv),
                                              FromDoubles(DType::kF64, f.a.shape, av), 2.5 * u);
    for (std::size_t i = 0; i < exact.size(); ++i) {
      EXPECT_LE(std::abs(got[i] - exact[i]), bound[i]) << m << " entry " << i;
    }
  }
}

TEST_F(PeftTest, FedSbExportsBTimesRAsTheUpFactor) {
  // LoRA-SB: W + s B R A with B d_out x k, R k x k, A k x d_in; k = min(r, d_out, d_in) may
  // fall below the configured rank, which rank_pattern then records.
  const wire::LoraSpec spec{.rank = 3, .alpha = 6, .targets = {"q_proj", "v_proj"}};
  TensorMap sb;
  for (const auto& [m, d_out, d_in, k] :
       std::vector<std::tuple<std::string, int, int, int>>{{kQ, 6, 4, 3}, {kV, 2, 7, 2}}) {
    sb[LoraAName(m)] = Random(k, d_in, DType::kF64);
    sb[LoraBName(m)] = Random(d_out, k, DType::kF64);
    sb[m + ".lora_R.weight"] = Random(k, k, DType::kF64);
  }
  const PeftAdapter peft = PeftFromAdapter(sb, spec, "", DType::kF64).value();
  EXPECT_EQ(peft.RankOf(kV), 2u);
  for (const std::string& m : {kQ, kV}) {
    const std::vector<double> br = Product(sb.at(LoraBName(m)), sb.at(m + ".lora_R.weight"));
    const Tensor br_t = FromDoubles(DType::kF64, sb.at(LoraBName(m)).shape, br);
    const std::vector<double> want = Product(br_t, sb.at(LoraAName(m)), 2.0);
    const PeftFactors& f = peft.modules.at(m);
    EXPECT_LT(MaxAbsDiff(Product(f.b, f.a, peft.ScaleOf(m)), want), 1e-12) << m;
  }
}

TEST_F(PeftTest, KeyVariantsAndHalfPrecisionAreReadAsF32) {
  const PeftAdapter peft = PeftFromAdapter(Adapter({{kQ, 6, 4, 4}}), kSpec).value();
  ASSERT_TRUE(ExportPeft(dir_, peft, {.dtype = DType::kBF16}).ok());
  // Rewrite the keys the way an unstripped state dict names them (adapter "default").
  safetensors::File file = safetensors::Read(dir_ + "/adapter_model.safetensors").value();
  TensorMap renamed;
  for (auto& [name, t] : file.tensors) {
    std::string n = name;
    n.replace(n.rfind(".weight"), 7, ".default.weight");
    renamed[n] = t;
  }
  ASSERT_TRUE(safetensors::Write(dir_ + "/adapter_model.safetensors", renamed).ok());
  const PeftAdapter back = ImportPeft(dir_).value();
  const PeftFactors& f = back.modules.at(kQ);
  EXPECT_EQ(f.a.dtype, DType::kF32);
  const std::vector<float> want =
      ToFloats(FromDoubles(DType::kBF16, f.a.shape, ToDoubles(peft.modules.at(kQ).a)));
  EXPECT_EQ(ToFloats(f.a), want);
}

TEST_F(PeftTest, MalformedAdaptersGetTheirCodeAndNameTheFileAndKey) {
  const PeftAdapter peft = PeftFromAdapter(Adapter({{kQ, 6, 4, 4}, {kUp, 9, 5, 4}}), kSpec).value();
  const auto expect = [](const Result<PeftAdapter>& r, StatusCode code,
                         std::initializer_list<std::string> names) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    for (const std::string& n : names) {
      EXPECT_NE(r.status().message().find(n), std::string::npos)
          << "'" << n << "' not in: " << r.status().message();
    }
  };
  // No config at all.
  expect(ImportPeft(dir_), StatusCode::kNotFound, {"adapter_config.json"});
  // Only pickled weights.
  ASSERT_TRUE(ExportPeft(dir_ + "/pickle", peft).ok());
  std::filesystem::rename(dir_ + "/pickle/adapter_model.safetensors",
                          dir_ + "/pickle/adapter_model.bin");
  expect(ImportPeft(dir_ + "/pickle"), StatusCode::kUnimplemented, {"adapter_model.bin"});

  const std::string d = dir_ + "/bad";
  const auto reset = [&] { ASSERT_TRUE(ExportPeft(d, peft).ok()); };
  // An A without its B.
  reset();
  TensorMap t = PeftTensors(peft);
  t.erase("base_model.model." + kUp + ".lora_B.weight");
  ASSERT_TRUE(safetensors::Write(d + "/adapter_model.safetensors", t).ok());
  expect(ImportPeft(d), StatusCode::kInvalidArgument,
         {"adapter_model.safetensors", "base_model.model." + kUp + ".lora_A.weight", "lora_B"});
  // Ranks that disagree with r.
  reset();
  nlohmann::json c = Config(d);
  c["r"] = 5;
  WriteConfig(d, c);
  expect(ImportPeft(d), StatusCode::kInvalidArgument,
         {"adapter_model.safetensors", ".lora_A.weight", "rank 4", "rank 5"});
  // A B whose rank is not its A's.
  reset();
  t = PeftTensors(peft);
  t["base_model.model." + kQ + ".lora_B.weight"] = Zeros(DType::kF32, {6, 3});
  ASSERT_TRUE(safetensors::Write(d + "/adapter_model.safetensors", t).ok());
  expect(ImportPeft(d), StatusCode::kInvalidArgument, {kQ + ".lora_B.weight", "[6, 3]"});
  // Features we do not implement, each named by its key.
  const std::vector<std::pair<std::string, nlohmann::json>> features = {
      {"use_dora", true},
      {"bias", "all"},
      {"modules_to_save", {"lm_head"}},
      {"peft_type", "IA3"},
      {"init_lora_weights", "pissa"}};
  for (const auto& [key, value] : features) {
    reset();
    c = Config(d);
    c[key] = value;
    WriteConfig(d, c);
    expect(ImportPeft(d), StatusCode::kUnimplemented, {"adapter_config.json", key});
  }
  // A DoRA magnitude in the weights even when the config says nothing.
  reset();
  t = PeftTensors(peft);
  t["base_model.model." + kQ + ".lora_magnitude_vector"] = Zeros(DType::kF32, {6});
  ASSERT_TRUE(safetensors::Write(d + "/adapter_model.safetensors", t).ok());
  expect(ImportPeft(d), StatusCode::kUnimplemented, {"lora_magnitude_vector"});
  // Not JSON.
  reset();
  ASSERT_TRUE(fs::WriteFileAtomic(d + "/adapter_config.json", std::string("{r: 4")).ok());
  expect(ImportPeft(d), StatusCode::kInvalidArgument, {"adapter_config.json"});
}

TEST_F(PeftTest, ExportReplacesAnAdapterButNeverAnUnrelatedDirectory) {
  PeftAdapter peft = PeftFromAdapter(Adapter({{kQ, 6, 4, 4}}), kSpec).value();
  ASSERT_TRUE(ExportPeft(dir_ + "/adapter", peft).ok());
  peft = PeftFromAdapter(Adapter({{kQ, 6, 4, 4}}), kSpec).value();
  ASSERT_TRUE(ExportPeft(dir_ + "/adapter/", peft).ok());
  EXPECT_EQ(ImportPeft(dir_ + "/adapter").value(), peft);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);

  ASSERT_TRUE(fs::MakeDirectories(dir_ + "/precious").ok());
  ASSERT_TRUE(fs::WriteFileAtomic(dir_ + "/precious/notes.txt", std::string("keep me")).ok());
  const Status s = ExportPeft(dir_ + "/precious", peft);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/precious/notes.txt"));
}

}  // namespace
}  // namespace fedlora::lora
