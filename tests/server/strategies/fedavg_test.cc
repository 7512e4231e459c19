#include "server/strategies/fedavg.h"

#include <gtest/gtest.h>

#include <random>

#include "server/robust/aggregation_rule.h"


namespace fedlora::server {
namespace {

// A strategy object for one call (AggregateAll takes a Strategy&).
Strategy& Stateless(FedAvg&& s) { return s; }

// Random factors for one module with d_out != d_in, to catch transposes.
constexpr std::int64_t kOut = 5, kIn = 3, kRank = 2;

Tensor Random(std::int64_t rows, std::int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<std::size_t>(rows * cols));
  for (double& x : v) x = normal(rng);
  return FromDoubles(DType::kF64, {rows, cols}, v);
}

ClientUpdate Upload(std::string id, std::uint64_t examples, std::uint64_t samples,
                    std::mt19937_64& rng) {
  ClientUpdate u;
  u.client_id = std::move(id);
  u.num_examples = examples;
  u.num_samples = samples;
  u.tensors["m.lora_A.weight"] = Random(kRank, kIn, rng);
  u.tensors["m.lora_B.weight"] = Random(kOut, kRank, rng);
  return u;
}

// Dense product B·A of an update, row-major kOut x kIn.
std::vector<double> Product(const TensorMap& t) {
  const std::vector<double> a = ToDoubles(t.at("m.lora_A.weight"));
  const std::vector<double> b = ToDoubles(t.at("m.lora_B.weight"));
  std::vector<double> p(kOut * kIn, 0.0);
  for (int i = 0; i < kOut; ++i)
    for (int j = 0; j < kIn; ++j)
      for (int r = 0; r < kRank; ++r) p[i * kIn + j] += b[i * kRank + r] * a[r * kIn + j];
  return p;
}

std::vector<double> Mean(std::span<const ClientUpdate> ups, std::span<const double> w,
                         const char* name) {
  std::vector<double> m(ToDoubles(ups[0].tensors.at(name)).size(), 0.0);
  for (std::size_t k = 0; k < ups.size(); ++k) {
    const auto v = ToDoubles(ups[k].tensors.at(name));
    for (std::size_t i = 0; i < m.size(); ++i) m[i] += w[k] * v[i];
  }
  return m;
}

TEST(FedAvgTest, WeightsEachClientByItsExampleCount) {
  FedAvg fedavg({.weighting = Weighting::kExamples});
  ClientUpdate a{"a", 1, 1, {}, {{"w", MakeF32({2}, std::vector<float>{0, 0})}}};
  ClientUpdate b{"b", 1, 3, {}, {{"w", MakeF32({2}, std::vector<float>{4, 8})}}};
  GlobalState state;
  const std::vector<ClientUpdate> ups = {a, b};
  const Result<AggregateReport> report = AggregateAll(fedavg, state, 1, ups, {});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(state.adapter.at("w"), MakeF32({2}, std::vector<float>{3, 6}));
  EXPECT_DOUBLE_EQ(report->weights.at("a"), 0.25);
  EXPECT_DOUBLE_EQ(report->weights.at("b"), 0.75);
}

TEST(FedAvgTest, SamplesAndUniformWeightingsAreHonoured) {
  ClientUpdate a{"a", 30, 1, {}, {{"w", MakeF32({1}, std::vector<float>{0})}}};
  ClientUpdate b{"b", 10, 9, {}, {{"w", MakeF32({1}, std::vector<float>{8})}}};
  const std::vector<ClientUpdate> ups = {a, b};
  GlobalState s1, s2;
  ASSERT_TRUE(AggregateAll(Stateless(FedAvg({.weighting = Weighting::kSamples})), s1, 1, ups, {}).ok());
  ASSERT_TRUE(AggregateAll(Stateless(FedAvg({.weighting = Weighting::kUniform})), s2, 1, ups, {}).ok());
  EXPECT_EQ(ToDoubles(s1.adapter.at("w"))[0], 2.0);
  EXPECT_EQ(ToDoubles(s2.adapter.at("w"))[0], 4.0);
}

TEST(FedAvgTest, ResultDoesNotDependOnArrivalOrder) {
  std::mt19937_64 rng(1);
  std::vector<ClientUpdate> ups;
  for (int k = 0; k < 6; ++k) ups.push_back(Upload("c" + std::to_string(k), 10 + k, 5, rng));
  FedAvg fedavg({.weighting = Weighting::kExamples});
  GlobalState forward, backward;
  ASSERT_TRUE(AggregateAll(fedavg, forward, 1, ups, {}).ok());
  std::reverse(ups.begin(), ups.end());
  ASSERT_TRUE(AggregateAll(fedavg, backward, 1, ups, {}).ok());
  EXPECT_EQ(forward.adapter, backward.adapter);  // Bit-identical.
}

TEST(FedAvgTest, RejectsClientsThatTrainedDifferentShapes) {
  ClientUpdate a{"a", 1, 1, {}, {{"w", Zeros(DType::kF32, {2, 3})}}};
  ClientUpdate b{"b", 1, 1, {}, {{"w", Zeros(DType::kF32, {3, 2})}}};
  GlobalState state;
  state.adapter["w"] = Zeros(DType::kF32, {2, 3});
  const GlobalState before = state;
  const std::vector<ClientUpdate> ups = {a, b};
  const Result<AggregateReport> r = AggregateAll(Stateless(FedAvg({})), state, 1, ups, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("client b"), std::string::npos);
  EXPECT_EQ(state, before);  // Unchanged on error.
}

TEST(FedAvgTest, ZeroTotalExamplesIsAnErrorNotADivisionByZero) {
  ClientUpdate a{"a", 1, 0, {}, {{"w", Zeros(DType::kF32, {1})}}};
  GlobalState state;
  const std::vector<ClientUpdate> ups = {a};
  EXPECT_EQ(AggregateAll(Stateless(FedAvg({})), state, 1, ups, {}).status().code(), StatusCode::kInvalidArgument);
}

// ALGORITHMS.md §1f: FedAvg's error E = sum p_k B_k A_k - B̄Ā equals the weighted
// cross-covariance sum p_k (B_k - B̄)(A_k - Ā); it is non-zero in general and vanishes when all
// clients share A (FFA-LoRA).
TEST(FedAvgTest, InexactnessEqualsTheWeightedFactorCovariance) {
  std::mt19937_64 rng(7);
  std::vector<ClientUpdate> ups;
  for (int k = 0; k < 4; ++k) ups.push_back(Upload("c" + std::to_string(k), 3 + 2 * k, 1, rng));
  const std::vector<double> w = ComputeWeights(ups, Weighting::kExamples).value();
  GlobalState state;
  ASSERT_TRUE(AggregateAll(Stateless(FedAvg({.weighting = Weighting::kExamples})), state, 1, ups, {}).ok());
  // Ideal update vs FedAvg's (computed from the f32 global would lose precision: use means).
  std::vector<double> ideal(kOut * kIn, 0.0);
  for (std::size_t k = 0; k < ups.size(); ++k) {
    const auto p = Product(ups[k].tensors);
    for (std::size_t i = 0; i < ideal.size(); ++i) ideal[i] += w[k] * p[i];
  }
  TensorMap means;
  means["m.lora_A.weight"] = FromDoubles(DType::kF64, {kRank, kIn}, Mean(ups, w, "m.lora_A.weight"));
  means["m.lora_B.weight"] = FromDoubles(DType::kF64, {kOut, kRank}, Mean(ups, w, "m.lora_B.weight"));
  const std::vector<double> fedavg = Product(means);
  std::vector<double> covariance(kOut * kIn, 0.0);
  const auto abar = ToDoubles(means.at("m.lora_A.weight"));
  const auto bbar = ToDoubles(means.at("m.lora_B.weight"));
  for (std::size_t k = 0; k < ups.size(); ++k) {
    const auto a = ToDoubles(ups[k].tensors.at("m.lora_A.weight"));
    const auto b = ToDoubles(ups[k].tensors.at("m.lora_B.weight"));
    for (int i = 0; i < kOut; ++i)
      for (int j = 0; j < kIn; ++j)
        for (int r = 0; r < kRank; ++r)
          covariance[i * kIn + j] += w[k] * (b[i * kRank + r] - bbar[i * kRank + r]) *
                                     (a[r * kIn + j] - abar[r * kIn + j]);
  }
  double max_norm = 0;
  for (std::size_t i = 0; i < ideal.size(); ++i) {
    EXPECT_NEAR(ideal[i] - fedavg[i], covariance[i], 1e-12);
    max_norm = std::max(max_norm, std::abs(covariance[i]));
  }
  EXPECT_GT(max_norm, 1e-3);
  // The f32 global adapter equals the means up to f32 rounding.
  const auto global_a = ToDoubles(state.adapter.at("m.lora_A.weight"));
  for (std::size_t i = 0; i < abar.size(); ++i) EXPECT_NEAR(global_a[i], abar[i], 1e-6);
}

TEST(FedAvgTest, SharedAMakesTheAverageExact) {
  std::mt19937_64 rng(9);
  std::vector<ClientUpdate> ups;
  for (int k = 0; k < 3; ++k) ups.push_back(Upload("c" + std::to_string(k), 1 + k, 1, rng));
  for (auto& u : ups) u.tensors["m.lora_A.weight"] = ups[0].tensors["m.lora_A.weight"];
  const std::vector<double> w = ComputeWeights(ups, Weighting::kExamples).value();
  TensorMap means;
  means["m.lora_A.weight"] = FromDoubles(DType::kF64, {kRank, kIn}, Mean(ups, w, "m.lora_A.weight"));
  means["m.lora_B.weight"] = FromDoubles(DType::kF64, {kOut, kRank}, Mean(ups, w, "m.lora_B.weight"));
  std::vector<double> ideal(kOut * kIn, 0.0);
  for (std::size_t k = 0; k < ups.size(); ++k) {
    const auto p = Product(ups[k].tensors);
    for (std::size_t i = 0; i < ideal.size(); ++i) ideal[i] += w[k] * p[i];
  }
  const auto fedavg = Product(means);
  for (std::size_t i = 0; i < ideal.size(); ++i) EXPECT_NEAR(ideal[i], fedavg[i], 1e-12);
}

TEST(FedAvgTest, InitializeRejectsTargetsTheModelLacks) {
  FedAvg fedavg({.lora = {.rank = 4, .alpha = 8, .targets = {"q_proj"}}});
  const ModelLayout layout{"x", {{"model.layers.0.mlp.up_proj", 8, 4}}};
  EXPECT_EQ(fedavg.Initialize(layout, std::nullopt).status().code(), StatusCode::kInvalidArgument);
}

TEST(FedAvgTest, ConfigureAsksEveryClientForTheGlobalShapesInTheUploadDtype) {
  wire::TrainSpec train;
  train.upload_dtype = DType::kBF16;
  FedAvg fedavg({.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj"}}, .train = train});
  const ModelLayout layout{"x", {{"model.layers.0.self_attn.q_proj", 6, 4}}};
  const GlobalState state = fedavg.Initialize(layout, std::nullopt).value();
  const std::vector<ClientInfo> clients = {{"a", {}, {}, {}}, {"b", {}, {}, {}}};
  const std::vector<ClientTask> tasks = fedavg.Configure(state, 1, clients).value();
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[1].client_id, "b");
  EXPECT_EQ(tasks[0].tensors, state.adapter);
  EXPECT_EQ(tasks[0].expected_upload.at("model.layers.0.self_attn.q_proj.lora_B.weight").spec,
            (TensorSpec{DType::kBF16, {6, 2}}));
}

// Gives the uploads only slice by slice: a whole-upload read fails the round.
class SlicesOnly final : public UploadSource {
 public:
  explicit SlicesOnly(const MemoryUploads& inner) : inner_(inner) {}
  std::size_t size() const override { return inner_.size(); }
  Status ForEach(
      const std::function<Status(const ClientUpdate&, const ClientTask&)>&) const override {
    return FailedPrecondition("whole uploads were read");
  }
  Status ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                    std::vector<std::vector<double>>& out) const override {
    ++slices;
    largest = std::max(largest, count * static_cast<std::int64_t>(inner_.size()));
    return inner_.ReadSlices(name, begin, count, out);
  }
  mutable int slices = 0;
  mutable std::int64_t largest = 0;

 private:
  const MemoryUploads& inner_;
};

TEST(FedAvgTest, ACoordinateWiseRuleCombinesSliceBySliceWithoutHoldingTheUploads) {
  for (const char* rule_name : {"median", "trimmed_mean"}) {
    AggregationRuleConfig rule_config;
    rule_config.name = rule_name;
    rule_config.trim_fraction = 0.25;
    const std::shared_ptr<const AggregationRule> rule = MakeAggregationRule(rule_config).value();
    FedAvgConfig config{.weighting = Weighting::kExamples, .rule = rule,
                        .state_dtype = DType::kF64};
    config.slice_values = 8;  // 4 uploads: 2 values of each per slice.
    FedAvg fedavg(config);
    std::mt19937_64 rng(9);
    const std::vector<ClientUpdate> ups = {Upload("d", 3, 1, rng), Upload("a", 5, 1, rng),
                                           Upload("c", 7, 1, rng), Upload("b", 9, 1, rng)};
    GlobalState state;
    std::unique_ptr<RoundAccumulator> acc = fedavg.Begin(state, 1).value();
    for (const ClientUpdate& u : ups) ASSERT_TRUE(acc->Fold(u, ClientTask{}).ok());
    const MemoryUploads memory(ups, {});
    const SlicesOnly slices(memory);
    const Result<AggregateReport> report = acc->Finish(state, slices);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_EQ(slices.largest, 8) << rule_name;
    EXPECT_EQ(slices.slices, 3 + 5) << rule_name;  // A: 6 values, B: 10 values, 2 at a time.
    // The same as the rule over whole uploads (sorted by client id, as the round sees them).
    std::vector<ClientUpdate> sorted = ups;
    std::sort(sorted.begin(), sorted.end(),
              [](const ClientUpdate& x, const ClientUpdate& y) { return x.client_id < y.client_id; });
    const std::vector<double> w = ComputeWeights(sorted, Weighting::kExamples).value();
    const RuleOutcome whole = rule->Combine(sorted, w, DType::kF64).value();
    EXPECT_EQ(state.adapter, whole.combined) << rule_name;
    for (std::size_t k = 0; k < sorted.size(); ++k) {
      EXPECT_NEAR(report->weights.at(sorted[k].client_id), whole.shares[k], 1e-12) << rule_name;
    }
  }
}

}  // namespace
}  // namespace fedlora::server
