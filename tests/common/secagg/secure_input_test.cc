// What a client sums under secure aggregation: its upload placed at the global shape (as is,
// zero-padded to the global rank, or scattered to its sketch), weighted, quantised, with its
// weight; and what the coordinator reads back from the sum.
#include "common/secagg/secure_input.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/secagg/masking.h"
#include "common/secagg/quantize.h"

namespace fedlora::secagg {
namespace {

wire::SecAggParams Params(std::vector<wire::SecAggSlot> layout) {
  wire::SecAggParams p;
  p.clip = 1.0;
  p.levels_bits = 20;
  p.modulus_bits = 32;
  p.weighting = wire::SecAggWeighting::kExamples;
  p.weight_scale = 100;
  p.layout = std::move(layout);
  return p;
}

wire::Update Upload(std::uint64_t examples, TensorMap tensors) {
  wire::Update u;
  u.num_examples = examples;
  u.num_samples = 8;
  u.tensors = std::move(tensors);
  return u;
}

// The sum of the given clients' inputs, decoded.
SecureSum SumOf(const wire::SecAggParams& p, const std::vector<SecureInput>& inputs) {
  std::vector<std::uint32_t> sum(inputs.front().words.size(), 0);
  const Modulus m = Modulus::Bits(p.modulus_bits).value();
  for (const SecureInput& in : inputs) EXPECT_TRUE(AddInto(sum, in.words, m).ok());
  return DecodeSecureSum(p, sum, inputs.size()).value();
}

TEST(SecureInputTest, TheWeightedMeanOfTwoClientsComesBackWithinTheQuantisationBound) {
  const wire::SecAggParams p = Params({{"m.lora_A.weight", {2, 3}}});
  const std::vector<double> x1 = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6};
  const std::vector<double> x2 = {-0.3, 0.2, 0.1, 0.0, 0.5, -0.6};
  std::vector<SecureInput> inputs;
  inputs.push_back(
      MakeSecureInput(p, {}, {}, Upload(30, {{"m.lora_A.weight", MakeF64({2, 3}, x1)}}), 1)
          .value());
  inputs.push_back(
      MakeSecureInput(p, {}, {}, Upload(90, {{"m.lora_A.weight", MakeF64({2, 3}, x2)}}), 2)
          .value());
  EXPECT_EQ(inputs[0].words.size(), 7u);  // 6 values and the weight.
  const SecureSum sum = SumOf(p, inputs);
  const double step = QuantizationStep({p.clip, p.levels_bits, p.modulus_bits});
  EXPECT_NEAR(sum.weights.at("m.lora_A.weight"), 1.2, 2 / std::ldexp(1.0, 20));
  EXPECT_DOUBLE_EQ(sum.error_bound, 2 * step);
  const std::vector<double> got = ToDoubles(sum.weighted.at("m.lora_A.weight"));
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], 0.3 * x1[i] + 0.9 * x2[i], sum.error_bound) << i;  // Analytic bound.
  }
}

TEST(SecureInputTest, DistributedNoiseSharesSumToTheRoundsDeviationAndLeaveTheWeightsExact) {
  // Distributed DP: 4 clients each add N(0, s^2) to every value word; the decoded sum carries
  // N(0, 4 s^2) on top of the values' sum, and the weight words none at all.
  wire::SecAggParams p = Params({{"m.lora_B.weight", {100, 50}}});
  p.weighting = wire::SecAggWeighting::kUniform;
  p.weight_scale = 1;
  const std::vector<double> x(5000, 0.125);
  constexpr double kShare = 0.02;
  std::vector<SecureInput> inputs;
  for (std::uint8_t k = 0; k < 4; ++k) {
    InputNoise noise{kShare, {}};
    noise.seed.fill(k);
    inputs.push_back(MakeSecureInput(p, {}, {},
                                     Upload(1, {{"m.lora_B.weight", MakeF64({100, 50}, x)}}), k,
                                     &noise)
                         .value());
  }
  const SecureSum sum = SumOf(p, inputs);
  EXPECT_NEAR(sum.weights.at("m.lora_B.weight"), 4.0, 1e-12);
  const std::vector<double> got = ToDoubles(sum.weighted.at("m.lora_B.weight"));
  double mean = 0, squares = 0;
  for (const double v : got) mean += (v - 0.5) / got.size();
  for (const double v : got) squares += (v - 0.5 - mean) * (v - 0.5 - mean) / got.size();
  EXPECT_NEAR(std::sqrt(squares), 2 * kShare, 0.05 * 2 * kShare);  // sqrt(4) shares.
  EXPECT_NEAR(mean, 0.0, 4 * 2 * kShare / std::sqrt(5000.0));
}

TEST(SecureInputTest, QuantisationErrorStaysWithinItsBoundOverManyInputs) {
  const wire::SecAggParams p = Params({{"t", {1000}}});
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<SecureInput> inputs;
  std::vector<double> exact(1000, 0.0);
  double weight = 0;
  for (int k = 0; k < 20; ++k) {
    std::vector<double> x(1000);
    for (double& v : x) v = u(rng);
    const std::uint64_t examples = 10 + 4 * k;
    inputs.push_back(MakeSecureInput(p, {}, {}, Upload(examples, {{"t", MakeF64({1000}, x)}}),
                                     static_cast<std::uint64_t>(k))
                         .value());
    const double w = examples / 100.0;
    weight += w;
    for (std::size_t i = 0; i < x.size(); ++i) exact[i] += w * x[i];
  }
  const SecureSum sum = SumOf(p, inputs);
  const std::vector<double> got = ToDoubles(sum.weighted.at("t"));
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - exact[i]));
  EXPECT_LE(worst, sum.error_bound);
  EXPECT_GT(worst, 0.0);  // It is quantised, not passed through.
  EXPECT_NEAR(sum.weights.at("t"), weight, 20.0 / ((1 << 20) - 1));
}

TEST(SecureInputTest, ClippedValuesAndAnOverScaleCountAreCounted) {
  wire::SecAggParams p = Params({{"t", {4}}});
  const std::vector<double> x = {0.5, 1.5, -3.0, std::nan("")};
  const Result<SecureInput> in =
      MakeSecureInput(p, {}, {}, Upload(250, {{"t", MakeF64({4}, x)}}), 3);  // 250 > scale 100.
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(in->weight, 1.0);
  EXPECT_EQ(in->clipped, 4u);  // The count, 1.5, -3 and NaN.
}

TEST(SecureInputTest, APrunedRankIsZeroPaddedAndAnUntrainedSlotHasExactlyZeroWeight) {
  wire::SecAggParams p = Params(
      {{"m.lora_A.weight", {3, 2}}, {"m.lora_B.weight", {2, 3}}, {"n.lora_A.weight", {3, 2}}});
  p.weighting = wire::SecAggWeighting::kUniform;
  p.weight_scale = 1;
  // Rank 2 of 3 on module m; module n not trained at all.
  const TensorMap upload = {{"m.lora_A.weight", MakeF64({2, 2}, std::vector<double>{1, 2, 3, 4})},
                            {"m.lora_B.weight", MakeF64({2, 2}, std::vector<double>{5, 6, 7, 8})}};
  p.clip = 8;
  const SecureSum sum = SumOf(p, {MakeSecureInput(p, {}, {}, Upload(1, upload), 9).value()});
  EXPECT_EQ(sum.weights.at("n.lora_A.weight"), 0.0);  // Exactly: nobody trained it.
  EXPECT_EQ(sum.Means().count("n.lora_A.weight"), 0u);
  const std::vector<double> a = ToDoubles(sum.Means().at("m.lora_A.weight"));
  const std::vector<double> b = ToDoubles(sum.Means().at("m.lora_B.weight"));
  const std::vector<double> want_a = {1, 2, 3, 4, 0, 0}, want_b = {5, 6, 0, 7, 8, 0};
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(a[i], want_a[i], sum.error_bound) << i;
    EXPECT_NEAR(b[i], want_b[i], sum.error_bound) << i;
  }
}

TEST(SecureInputTest, ASketchedUploadSumsItsDeltaScatteredToItsIndices) {
  wire::SecAggParams p = Params({{"m.lora_A.weight", {4, 1}}, {"m.lora_B.weight", {1, 4}}});
  p.weighting = wire::SecAggWeighting::kUniform;
  p.weight_scale = 1;
  p.delta = true;
  wire::AdapterPlan plan;
  plan.mode = wire::AdapterMode::kSketched;
  plan.modules = {{"m", 2, {1, 3}}};
  const TensorMap sent = {{"m.lora_A.weight", MakeF64({2, 1}, std::vector<double>{0.5, 0.5})},
                          {"m.lora_B.weight", MakeF64({1, 2}, std::vector<double>{0.5, 0.5})}};
  const TensorMap trained = {{"m.lora_A.weight", MakeF64({2, 1}, std::vector<double>{0.25, 0.75})},
                             {"m.lora_B.weight", MakeF64({1, 2}, std::vector<double>{0.0, 1.0})}};
  const SecureSum sum = SumOf(p, {MakeSecureInput(p, plan, sent, Upload(1, trained), 4).value()});
  const std::vector<double> a = ToDoubles(sum.weighted.at("m.lora_A.weight"));
  const std::vector<double> b = ToDoubles(sum.weighted.at("m.lora_B.weight"));
  const std::vector<double> want_a = {0, 0.25, 0, -0.25}, want_b = {0, 0.5, 0, -0.5};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(a[i], want_a[i], sum.error_bound) << i;
    EXPECT_NEAR(b[i], want_b[i], sum.error_bound) << i;
  }
}

TEST(SecureInputTest, AnUploadThatFitsNoSlotIsRefusedNamingTheTensor) {
  const wire::SecAggParams p = Params({{"m.lora_A.weight", {2, 2}}});
  const Result<SecureInput> stranger =
      MakeSecureInput(p, {}, {}, Upload(1, {{"x.lora_A.weight", Zeros(DType::kF32, {2, 2})}}), 1);
  ASSERT_FALSE(stranger.ok());
  EXPECT_NE(stranger.status().message().find("'x.lora_A.weight'"), std::string::npos);
  const Result<SecureInput> too_big =
      MakeSecureInput(p, {}, {}, Upload(1, {{"m.lora_A.weight", Zeros(DType::kF32, {3, 2})}}), 1);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("does not fit"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::secagg
