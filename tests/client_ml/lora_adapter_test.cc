#include "client/lora/lora_adapter.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "client/torch_bridge.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

wire::LoraSpec AllTargets(std::uint32_t rank, double alpha, bool rslora = false) {
  wire::LoraSpec spec;
  spec.rank = rank;
  spec.alpha = alpha;
  spec.rslora = rslora;
  spec.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return spec;
}

std::unique_ptr<LoraAdapter> CreateOrDie(const wire::LoraSpec& spec, std::uint64_t seed = 1) {
  Result<std::unique_ptr<LoraAdapter>> adapter = LoraAdapter::Create(Stories260K(), spec, seed);
  FEDLORA_CHECK_MSG(adapter.ok(), adapter.status().ToString());
  return std::move(adapter).value();
}

// Gives every B a random value (a fresh adapter's B is 0, which would hide the adapter path).
void RandomizeB(LoraAdapter& adapter, std::uint64_t seed) {
  TensorMap tensors = *adapter.Export(DType::kF32);
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, t] : tensors) {
    if (name.ends_with("lora_B.weight")) {
      t = *ToWire(at::randn(t.shape, gen, at::kFloat) * 0.1);
    }
  }
  ASSERT_TRUE(adapter.Load(tensors).ok());
}

TEST(LoraAdapterTest, FreshAdapterLeavesTheLogitsEqualToTheBase) {
  auto adapter = CreateOrDie(AllTargets(8, 16));
  const at::Tensor tokens = RandomTokens(2, 32, 3);
  EXPECT_TRUE(at::equal(ForwardOrDie(Stories260K(), tokens, adapter.get()),
                        ForwardOrDie(Stories260K(), tokens)));
}

TEST(LoraAdapterTest, InitialisesAWithPeftKaimingUniformAndBWithZeros) {
  auto adapter = CreateOrDie(AllTargets(8, 16));
  const TensorMap tensors = *adapter->Export(DType::kF32);
  ASSERT_EQ(tensors.size(), 70u);
  const Tensor& a = tensors.at("model.layers.0.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{8, 172}));
  const double bound = 1.0 / std::sqrt(172.0);
  double sum_sq = 0.0;
  for (float v : ToFloats(a)) {
    EXPECT_LE(std::abs(v), bound);
    sum_sq += double(v) * v;
  }
  EXPECT_NEAR(std::sqrt(sum_sq / (8 * 172)), bound / std::sqrt(3.0), 0.1 * bound);  // U(-b, b).
  const Tensor& b = tensors.at("model.layers.0.mlp.down_proj.lora_B.weight");
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{64, 8}));
  EXPECT_EQ(b, Zeros(DType::kF32, {64, 8}));
}

TEST(LoraAdapterTest, InitialisationDependsOnlyOnTheSeed) {
  EXPECT_EQ(*CreateOrDie(AllTargets(4, 8), 5)->Export(DType::kF32),
            *CreateOrDie(AllTargets(4, 8), 5)->Export(DType::kF32));
  EXPECT_NE(*CreateOrDie(AllTargets(4, 8), 5)->Export(DType::kF32),
            *CreateOrDie(AllTargets(4, 8), 6)->Export(DType::kF32));
}

TEST(LoraAdapterTest, ForwardWithLoraEqualsForwardWithMergedWeights) {
  for (bool rslora : {false, true}) {
    SCOPED_TRACE(rslora ? "rslora" : "lora");
    auto adapter = CreateOrDie(AllTargets(4, 8, rslora));
    RandomizeB(*adapter, 9);
    const LlamaModel& base = Stories260K();
    std::map<std::string, at::Tensor> merged;
    for (const std::string& name : base.TensorNames()) merged[name] = base.Weight(name);
    for (const std::string& module : adapter->ModuleNames()) {
      const at::Tensor w = adapter->MergedWeight(base, module);
      ASSERT_TRUE(w.defined()) << module;
      merged[module + ".weight"] = w;
    }
    EXPECT_EQ(merged["model.layers.1.mlp.gate_proj.weight"].sizes(),
              (std::vector<std::int64_t>{172, 64}));
    const auto merged_model = LlamaModel::FromTensors(base.config(), merged);
    ASSERT_TRUE(merged_model.ok()) << merged_model.status().ToString();
    const at::Tensor tokens = RandomTokens(2, 48, 4);
    const at::Tensor with_lora = ForwardOrDie(base, tokens, adapter.get());
    const at::Tensor with_merged = ForwardOrDie(**merged_model, tokens);
    EXPECT_FALSE(at::allclose(with_lora, ForwardOrDie(base, tokens), 0, 1e-2));  // B != 0 matters.
    EXPECT_TRUE(at::allclose(with_lora, with_merged, 1e-4, 1e-4))
        << (with_lora - with_merged).abs().max().item<float>();
  }
}

TEST(LoraAdapterTest, ScaleIsAlphaOverRankOrOverSqrtRankWithRsLora) {
  EXPECT_DOUBLE_EQ(CreateOrDie(AllTargets(16, 32))->scale(), 2.0);
  EXPECT_DOUBLE_EQ(CreateOrDie(AllTargets(16, 32, /*rslora=*/true))->scale(), 8.0);
}

TEST(LoraAdapterTest, MergedWeightAddsScaledBTimesA) {
  auto adapter = CreateOrDie(AllTargets(2, 3, /*rslora=*/true));
  RandomizeB(*adapter, 2);
  const std::string module = "model.layers.3.mlp.up_proj";
  const TensorMap t = *adapter->Export(DType::kF32);
  const at::Tensor a = *FromWire(t.at(module + ".lora_A.weight"));
  const at::Tensor b = *FromWire(t.at(module + ".lora_B.weight"));
  const at::Tensor expected =
      Stories260K().Weight(module + ".weight") + at::matmul(b, a) * (3.0 / std::sqrt(2.0));
  EXPECT_TRUE(at::allclose(adapter->MergedWeight(Stories260K(), module), expected));
}

TEST(LoraAdapterTest, OnlyTargetedModulesAreAdapted) {
  wire::LoraSpec spec = AllTargets(4, 8);
  spec.targets = {"v_proj", "q_proj"};
  auto adapter = CreateOrDie(spec);
  const std::vector<std::string> modules = adapter->ModuleNames();
  ASSERT_EQ(modules.size(), 10u);
  EXPECT_EQ(modules[0], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(modules[1], "model.layers.0.self_attn.v_proj");
  EXPECT_EQ(adapter->Parameters().size(), 20u);
}

TEST(LoraAdapterTest, RejectsAnUnknownTargetListingTheValidNames) {
  wire::LoraSpec spec = AllTargets(4, 8);
  spec.targets = {"q_proj", "qkv_proj"};
  const Status s = LoraAdapter::Create(Stories260K(), spec, 0).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'qkv_proj'"));
  EXPECT_THAT(s.message(),
              HasSubstr("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
}

TEST(LoraAdapterTest, RejectsImpossibleHyperParameters) {
  wire::LoraSpec spec = AllTargets(0, 8);
  EXPECT_EQ(LoraAdapter::Create(Stories260K(), spec, 0).status().code(),
            StatusCode::kInvalidArgument);
  spec = AllTargets(4, 8);
  spec.dropout = 1.0;
  EXPECT_EQ(LoraAdapter::Create(Stories260K(), spec, 0).status().code(),
            StatusCode::kInvalidArgument);
  spec = AllTargets(4, -1);
  EXPECT_EQ(LoraAdapter::Create(Stories260K(), spec, 0).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LoraAdapterTest, ExportThenLoadRoundTripsExactly) {
  auto source = CreateOrDie(AllTargets(4, 8), 1);
  RandomizeB(*source, 3);
  auto target = CreateOrDie(AllTargets(4, 8), 2);
  ASSERT_TRUE(target->Load(*source->Export(DType::kF32)).ok());
  EXPECT_EQ(*target->Export(DType::kF32), *source->Export(DType::kF32));
}

TEST(LoraAdapterTest, LoadAcceptsEveryWireFloatDtype) {
  auto source = CreateOrDie(AllTargets(4, 8), 1);
  RandomizeB(*source, 3);
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dtype));
    const TensorMap wire = *source->Export(dtype);
    EXPECT_EQ(wire.begin()->second.dtype, dtype);
    auto target = CreateOrDie(AllTargets(4, 8), 2);
    ASSERT_TRUE(target->Load(wire).ok());
    EXPECT_EQ(*target->Export(dtype), wire);  // Widening to f32 and back is exact.
  }
}

TEST(LoraAdapterTest, LoadNamesAnUnknownTensor) {
  auto adapter = CreateOrDie(AllTargets(4, 8));
  TensorMap tensors = *adapter->Export(DType::kF32);
  tensors["model.layers.9.self_attn.q_proj.lora_A.weight"] = Zeros(DType::kF32, {4, 64});
  const Status s = adapter->Load(tensors);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'model.layers.9.self_attn.q_proj.lora_A.weight'"));
}

TEST(LoraAdapterTest, LoadNamesAMissingTensorAndChangesNothing) {
  auto adapter = CreateOrDie(AllTargets(4, 8));
  const TensorMap before = *adapter->Export(DType::kF32);
  TensorMap tensors = before;
  for (auto& [name, t] : tensors) t = Zeros(DType::kF32, t.shape);
  tensors.erase("model.layers.2.mlp.up_proj.lora_B.weight");
  const Status s = adapter->Load(tensors);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("missing adapter tensor 'model.layers.2.mlp.up_proj.lora_B.weight'"));
  EXPECT_EQ(*adapter->Export(DType::kF32), before);
}

TEST(LoraAdapterTest, LoadNamesATensorWithTheWrongShape) {
  auto adapter = CreateOrDie(AllTargets(4, 8));
  TensorMap tensors = *adapter->Export(DType::kF32);
  tensors["model.layers.0.mlp.gate_proj.lora_B.weight"] = Zeros(DType::kF32, {64, 4});
  const Status s = adapter->Load(tensors);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'model.layers.0.mlp.gate_proj.lora_B.weight' has shape [64, 4], expected [172, 4]"));
}

TEST(LoraAdapterTest, LoadRejectsNonFiniteValues) {
  auto adapter = CreateOrDie(AllTargets(4, 8));
  TensorMap tensors = *adapter->Export(DType::kF32);
  Tensor& a = tensors.at("model.layers.0.self_attn.q_proj.lora_A.weight");
  std::vector<float> values = ToFloats(a);
  values[3] = std::nanf("");
  a = MakeF32(a.shape, values);
  EXPECT_THAT(adapter->Load(tensors).message(), HasSubstr("NaN"));
}

TEST(LoraAdapterTest, DropoutAppliesOnlyInTrainingModeAndFollowsTheAdapterSeed) {
  wire::LoraSpec spec = AllTargets(4, 8);
  spec.dropout = 0.5;
  auto adapter = CreateOrDie(spec);
  RandomizeB(*adapter, 1);
  const at::Tensor tokens = RandomTokens(1, 16, 5);
  at::NoGradGuard no_grad;
  const at::Tensor eval1 = ForwardOrDie(Stories260K(), tokens, adapter.get());
  const at::Tensor eval2 = ForwardOrDie(Stories260K(), tokens, adapter.get());
  EXPECT_TRUE(at::equal(eval1, eval2));
  adapter->SetTraining(true);
  adapter->SetSeed(42);
  const at::Tensor train1 = ForwardOrDie(Stories260K(), tokens, adapter.get());
  const at::Tensor train2 = ForwardOrDie(Stories260K(), tokens, adapter.get());
  adapter->SetSeed(42);
  const at::Tensor train1_again = ForwardOrDie(Stories260K(), tokens, adapter.get());
  EXPECT_FALSE(at::equal(train1, eval1));
  EXPECT_FALSE(at::equal(train1, train2));
  EXPECT_TRUE(at::equal(train1, train1_again));
}

}  // namespace
}  // namespace fedlora::client
