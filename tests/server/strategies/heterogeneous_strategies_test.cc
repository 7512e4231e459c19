// HetLoRA, FSLoRA and LoRA-FAIR through their public interface.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server {
namespace {

using namespace testing;

TEST(HetLoraStrategyTest, ClientsGetPrefixesOfTheGlobalAtTheirRank) {
  auto het = Make("hetlora", {}, Context(/*rank=*/4, 8));
  GlobalState state = het->Initialize(kLayout, std::nullopt).value();
  std::vector<ClientInfo> clients = Clients({"big", "small"});
  clients[1].plan.modules = {{kModules[0].name, 2, {}}, {kModules[1].name, 1, {}}};
  const std::vector<ClientTask> tasks = het->Configure(state, 1, clients).value();
  const std::string a = lora::LoraAName(kModules[0].name);
  const Tensor& prefix = tasks[1].tensors.at(a);
  ASSERT_EQ(prefix.shape, (std::vector<std::int64_t>{2, kModules[0].d_in}));
  const std::vector<double> global = ToDoubles(state.adapter.at(a));
  const std::vector<double> got = ToDoubles(prefix);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], global[i]);  // A prefix.
  EXPECT_EQ(tasks[1].expected_upload.at(a).shrinkable_dim, 0);  // Pruning may shrink rows.
  EXPECT_GT(tasks[0].plan.pruning.gamma, 0.0);
}

TEST(HetLoraStrategyTest, ZeroPaddedAverageWeightsByUpdateNormAndRemembersPrunedRanks) {
  StrategyConfig config;
  config.hetlora.weighting = "sparsity";
  auto het = Make("hetlora", config, Context(/*rank=*/4, 8));
  GlobalState state = het->Initialize(kLayout, std::nullopt).value();
  std::vector<ClientInfo> clients = Clients({"a", "b"});
  clients[1].plan.modules = {{kModules[0].name, 2, {}}, {kModules[1].name, 2, {}}};
  std::vector<ClientTask> tasks = het->Configure(state, 1, clients).value();
  std::mt19937_64 rng(7);
  std::vector<ClientUpdate> updates = {RandomUpdate(tasks[0], 5, rng),
                                       RandomUpdate(tasks[1], 5, rng)};
  // Client b pruned q_proj from rank 2 to 1.
  const std::string qa = lora::LoraAName(kModules[0].name), qb = lora::LoraBName(kModules[0].name);
  updates[1].tensors[qa] = Random(1, kModules[0].d_in, rng);
  updates[1].tensors[qb] = Random(kModules[0].d_out, 1, rng);
  ASSERT_TRUE(het->ValidateUpdate(tasks[1], updates[1]).ok());
  const Result<AggregateReport> report = AggregateAll(*het, state, 1, updates, tasks);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  double sum = 0;
  for (const auto& [id, w] : report->weights) sum += w;
  EXPECT_NEAR(sum, 1.0, 1e-15);
  // Row 3 of A (beyond b's rank) holds only a's contribution, scaled by a's weight.
  const std::vector<double> ga = ToDoubles(state.adapter.at(qa));
  const std::vector<double> aa = ToDoubles(updates[0].tensors.at(qa));
  const double wa = report->weights.at("a");
  const std::int64_t d_in = kModules[0].d_in;
  for (std::int64_t j = 0; j < d_in; ++j) EXPECT_NEAR(ga[3 * d_in + j], wa * aa[3 * d_in + j], 1e-12);
  // b's pruned rank is remembered and used in its next task.
  const std::vector<ClientTask> next = het->Configure(state, 2, clients).value();
  EXPECT_EQ(next[1].tensors.at(qa).shape[0], 1);
}

TEST(HetLoraStrategyTest, MismatchedPrunedRanksOfAAndBAreRejected) {
  auto het = Make("hetlora", {}, Context(4, 8));
  GlobalState state = het->Initialize(kLayout, std::nullopt).value();
  const std::vector<ClientTask> tasks = het->Configure(state, 1, Clients({"a"})).value();
  std::mt19937_64 rng(8);
  ClientUpdate u = RandomUpdate(tasks[0], 1, rng);
  u.tensors[lora::LoraAName(kModules[0].name)] = Random(2, kModules[0].d_in, rng);
  const Status s = het->ValidateUpdate(tasks[0], u);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.detail(), static_cast<std::uint32_t>(wire::ErrorCode::kTensorShapeMismatch));
}

TEST(FsLoraStrategyTest, SketchesAreDeterministicPerRoundAndClientAndFreshEachRound) {
  StrategyConfig config;
  config.fslora.sketch_ratio = 0.5;
  auto fs = Make("fslora", config, Context(/*rank=*/8, 8));
  GlobalState state = fs->Initialize(kLayout, std::nullopt).value();
  const auto clients = Clients({"a", "b"});
  const auto t1 = fs->Configure(state, 1, clients).value();
  const auto t1_again = fs->Configure(state, 1, clients).value();
  const auto t2 = fs->Configure(state, 2, clients).value();
  EXPECT_EQ(t1[0].plan, t1_again[0].plan);  // A restart re-derives the same sketches.
  EXPECT_EQ(t1[0].plan.mode, wire::AdapterMode::kSketched);
  EXPECT_EQ(t1[0].plan.global_rank, 8u);
  ASSERT_EQ(t1[0].plan.modules[0].sketch.size(), 4u);
  EXPECT_NE(t1[0].plan.modules[0].sketch, t2[0].plan.modules[0].sketch);
  EXPECT_NE(t1[0].plan.modules[0].sketch, t1[1].plan.modules[0].sketch);
}

TEST(FsLoraStrategyTest, SgdWithLearningRateOneIsAMaskedAverageOfDeltas) {
  StrategyConfig config;
  config.weighting = "uniform";
  config.fslora.sketch_ratio = 0.5;
  config.fslora.server_optimizer = "sgd";
  config.fslora.server_learning_rate = 1.0;
  auto fs = Make("fslora", config, Context(/*rank=*/4, 8));
  GlobalState state = fs->Initialize(kLayout, std::nullopt).value();
  const GlobalState before = state;
  const auto clients = Clients({"a", "b"});
  const auto tasks = fs->Configure(state, 1, clients).value();
  std::mt19937_64 rng(9);
  std::vector<ClientUpdate> updates = {RandomUpdate(tasks[0], 1, rng), RandomUpdate(tasks[1], 1, rng)};
  ASSERT_TRUE(AggregateAll(*fs, state, 1, updates, tasks).ok());
  // Reference: theta - (1/M) sum_i scatter(I_i, sent_i - trained_i), column by column for B.
  const auto& m = kModules[0];
  const std::string b = lora::LoraBName(m.name);
  std::vector<double> expected = ToDoubles(before.adapter.at(b));
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& plans = tasks[i].plan.modules;
    const auto& idx = std::find_if(plans.begin(), plans.end(), [&](const wire::ModulePlan& p) {
                        return p.module == m.name;
                      })->sketch;
    const std::vector<double> sent = ToDoubles(tasks[i].tensors.at(b));
    const std::vector<double> trained = ToDoubles(updates[i].tensors.at(b));
    for (std::int64_t row = 0; row < m.d_out; ++row)
      for (std::size_t j = 0; j < idx.size(); ++j) {
        const std::size_t local = static_cast<std::size_t>(row) * idx.size() + j;
        expected[row * 4 + idx[j]] -= 0.5 * (sent[local] - trained[local]);
      }
  }
  const std::vector<double> got = ToDoubles(state.adapter.at(b));
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-12);
}

TEST(FsLoraStrategyTest, AdamWServerStepKeepsMomentsInTheState) {
  StrategyConfig config;
  config.fslora.server_optimizer = "adamw";
  config.fslora.server_learning_rate = 0.01;
  auto fs = Make("fslora", config, Context(4, 8));
  GlobalState state = fs->Initialize(kLayout, std::nullopt).value();
  const auto tasks = fs->Configure(state, 1, Clients({"a"})).value();
  std::mt19937_64 rng(10);
  std::vector<ClientUpdate> updates = {RandomUpdate(tasks[0], 1, rng)};
  ASSERT_TRUE(AggregateAll(*fs, state, 1, updates, tasks).ok());
  EXPECT_EQ(nlohmann::json::parse(state.strategy_json)["server_step"], 1);
  EXPECT_TRUE(state.extra.contains(lora::LoraAName(kModules[0].name) + ".exp_avg"));
  // Adam's first step moves every touched parameter by about the learning rate.
  const auto before = ToDoubles(fs->Initialize(kLayout, std::nullopt)->adapter.at(lora::LoraBName(kModules[0].name)));
  const auto after = ToDoubles(state.adapter.at(lora::LoraBName(kModules[0].name)));
  double max_step = 0;
  for (std::size_t i = 0; i < after.size(); ++i) max_step = std::max(max_step, std::abs(after[i] - before[i]));
  EXPECT_NEAR(max_step, 0.01, 1e-6);
}

// Runs LoRA-FAIR's ridge solver over `n` uniform clients and checks its normal equations against
// dense references; returns how many modules went through a dense sum.
double CheckRidgeNormalEquations(int n) {
  StrategyConfig config;
  config.lorafair.solver = "ridge";
  config.lorafair.lambda = 0.1;
  config.weighting = "uniform";
  auto fair = Make("lorafair", config);
  GlobalState state = fair->Initialize(kLayout, std::nullopt).value();
  std::vector<ClientInfo> clients;
  for (int k = 0; k < n; ++k) clients.push_back(ClientInfo{"c" + std::to_string(k), {}, {}, {}});
  const auto tasks = fair->Configure(state, 1, clients).value();
  std::mt19937_64 rng(11);
  std::vector<ClientUpdate> updates;
  for (const auto& t : tasks) updates.push_back(RandomUpdate(t, 1, rng));
  const Result<AggregateReport> report = AggregateAll(*fair, state, 1, updates, tasks);
  EXPECT_TRUE(report.ok()) << report.status().ToString();
  if (!report.ok()) return -1;
  for (const auto& m : kModules) {
    const std::string an = lora::LoraAName(m.name), bn = lora::LoraBName(m.name);
    Dense abar = Zero(3, m.d_in), bbar = Zero(m.d_out, 3), dw = Zero(m.d_out, m.d_in);
    for (const auto& u : updates) {
      const Dense a = FromTensor(u.tensors.at(an)), b = FromTensor(u.tensors.at(bn));
      for (std::size_t i = 0; i < abar.v.size(); ++i) abar.v[i] += a.v[i] / n;
      for (std::size_t i = 0; i < bbar.v.size(); ++i) bbar.v[i] += b.v[i] / n;
      AddProduct(dw, b, a, 1.0 / n);
    }
    EXPECT_LT(MaxAbsDiff(FromTensor(state.adapter.at(an)), abar), 1e-12);
    // (dW - B_g A_bar) A_bar^T == lambda (B_g - B_bar).
    const Dense bg = FromTensor(state.adapter.at(bn));
    Dense resid = dw;
    AddProduct(resid, bg, abar, -1.0);
    Dense abar_t = Zero(m.d_in, 3);
    for (std::int64_t i = 0; i < 3; ++i)
      for (std::int64_t j = 0; j < m.d_in; ++j) abar_t.at(j, i) = abar.at(i, j);
    Dense lhs = Zero(m.d_out, 3);
    AddProduct(lhs, resid, abar_t);
    Dense rhs = bg;
    for (std::size_t i = 0; i < rhs.v.size(); ++i) rhs.v[i] = 0.1 * (bg.v[i] - bbar.v[i]);
    EXPECT_LT(MaxAbsDiff(lhs, rhs), 1e-10) << m.name;
  }
  return report->metrics.at("dense_modules");
}

TEST(LoraFairStrategyTest, RidgeSolverSatisfiesItsNormalEquations) {
  EXPECT_EQ(CheckRidgeNormalEquations(3), 0);  // Few clients: stacked factors.
}

TEST(LoraFairStrategyTest, RidgeSolverStaysExactWhenManyClientsFoldIntoADenseSum) {
  EXPECT_EQ(CheckRidgeNormalEquations(9), 2);  // 9 x rank 3 outgrows both dense modules.
}

TEST(LoraFairStrategyTest, CosineSolverBringsTheGlobalProductCloserToTheIdealUpdate) {
  auto fair = Make("lorafair");
  GlobalState state = fair->Initialize(kLayout, std::nullopt).value();
  const auto tasks = fair->Configure(state, 1, Clients({"a", "b", "c"})).value();
  std::mt19937_64 rng(12);
  std::vector<ClientUpdate> updates;
  for (const auto& t : tasks) updates.push_back(RandomUpdate(t, 1, rng));
  const Result<AggregateReport> report = AggregateAll(*fair, state, 1, updates, tasks);
  ASSERT_TRUE(report.ok());
  EXPECT_GT(report->metrics.at("cosine_after_mean"), report->metrics.at("cosine_before_mean"));
}

TEST(LoraFairStrategyTest, CosineSolverOnADenseSumMatchesItOnTheClientFactors) {
  // The same 9 uploads: once folded (dense sums), once with a share cap of 1 / 9, which gathers
  // them and runs the factor form; uniform weights make both averages identical.
  StrategyConfig folded, gathered;
  folded.weighting = gathered.weighting = "uniform";
  gathered.max_weight_share = 1.0 / 9 + 1e-12;
  auto fair_folded = Make("lorafair", folded);
  auto fair_gathered = Make("lorafair", gathered);
  GlobalState start = fair_folded->Initialize(kLayout, std::nullopt).value();
  std::vector<ClientInfo> clients;
  for (int k = 0; k < 9; ++k) clients.push_back(ClientInfo{"c" + std::to_string(k), {}, {}, {}});
  const auto tasks = fair_folded->Configure(start, 1, clients).value();
  std::mt19937_64 rng(13);
  std::vector<ClientUpdate> updates;
  for (const auto& t : tasks) updates.push_back(RandomUpdate(t, 1, rng));
  GlobalState a = start, b = start;
  const Result<AggregateReport> ra = AggregateAll(*fair_folded, a, 1, updates, tasks);
  const Result<AggregateReport> rb = AggregateAll(*fair_gathered, b, 1, updates, tasks);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->metrics.at("dense_modules"), 2);
  for (const auto& [name, t] : a.adapter) {
    EXPECT_LT(MaxAbsDiff(FromTensor(t), FromTensor(b.adapter.at(name))), 1e-10) << name;
  }
}

}  // namespace
}  // namespace fedlora::server
