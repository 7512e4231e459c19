// The strategies that are exact (FedEx-LoRA, FLoRA, FFA-LoRA, Fed-SB) and FedSA-LoRA, through
// their public interface: Configure -> client uploads -> Aggregate, checked against dense
// references in fp64 to 1e-10.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "server/strategies/fedsb.h"
#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server {
namespace {

using namespace testing;

// Runs one round: Configure for `clients`, random uploads, Aggregate. Returns the uploads.
std::vector<ClientUpdate> Round(Strategy& strategy, GlobalState& state, std::uint64_t round,
                                const std::vector<ClientInfo>& clients, std::mt19937_64& rng,
                                std::vector<ClientTask>* tasks_out = nullptr) {
  std::vector<ClientTask> tasks = strategy.Configure(state, round, clients).value();
  std::vector<ClientUpdate> updates;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    updates.push_back(RandomUpdate(tasks[k], 10 + 7 * k, rng));
  }
  const Result<AggregateReport> report = AggregateAll(strategy, state, round, updates, tasks);
  EXPECT_TRUE(report.ok()) << report.status().ToString();
  state.round = round;
  if (tasks_out != nullptr) *tasks_out = std::move(tasks);
  return updates;
}

std::vector<double> ExampleWeights(const std::vector<ClientUpdate>& updates) {
  double total = 0;
  for (const auto& u : updates) total += static_cast<double>(u.num_examples);
  std::vector<double> w;
  for (const auto& u : updates) w.push_back(static_cast<double>(u.num_examples) / total);
  return w;
}

// s * sum_k p_k B_k A_k for one module.
Dense IdealUpdate(const std::vector<ClientUpdate>& updates, const wire::ModuleInfo& m, double s) {
  const std::vector<double> w = ExampleWeights(updates);
  Dense ideal = Zero(m.d_out, m.d_in);
  for (std::size_t k = 0; k < updates.size(); ++k) {
    AddProduct(ideal, FromTensor(updates[k].tensors.at(lora::LoraBName(m.name))),
               FromTensor(updates[k].tensors.at(lora::LoraAName(m.name))), s * w[k]);
  }
  return ideal;
}

TEST(FedExStrategyTest, GlobalProductPlusCorrectionEqualsTheIdealUpdate) {
  auto fedex = Make("fedex");
  GlobalState state = fedex->Initialize(kLayout, std::nullopt).value();
  const GlobalState before = state;
  std::mt19937_64 rng(1);
  const auto updates = Round(*fedex, state, 1, Clients({"a", "b", "c"}), rng);
  const double s = 6.0 / 3;
  for (const auto& m : kModules) {
    // (W_new - W_old) + s*B_g*A_g must equal s*sum_k p_k B_k A_k.
    Dense lhs = CorrectionSum(state.corrections, m);
    AddProduct(lhs, FromTensor(state.adapter.at(lora::LoraBName(m.name))),
               FromTensor(state.adapter.at(lora::LoraAName(m.name))), s);
    EXPECT_LT(MaxAbsDiff(lhs, IdealUpdate(updates, m, s)), 1e-10) << m.name;
  }
  EXPECT_EQ(state.corrections.latest_version(), 1u);
  EXPECT_NE(state.adapter, before.adapter);
}

TEST(FedExStrategyTest, ManyClientsFoldIntoADenseSumAndTheCorrectionStaysExact) {
  auto fedex = Make("fedex");
  GlobalState state = fedex->Initialize(kLayout, std::nullopt).value();
  std::mt19937_64 rng(21);
  std::vector<ClientInfo> clients;
  for (int k = 0; k < 9; ++k) clients.push_back(ClientInfo{"c" + std::to_string(k), {}, {}, {}});
  const std::vector<ClientTask> tasks = fedex->Configure(state, 1, clients).value();
  std::vector<ClientUpdate> updates;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    updates.push_back(RandomUpdate(tasks[k], 10 + 7 * k, rng));
  }
  const Result<AggregateReport> report = AggregateAll(*fedex, state, 1, updates, tasks);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->metrics.at("dense_modules"), 2);  // 9 x rank 3 outgrew both modules.
  const double s = 6.0 / 3;
  for (const auto& m : kModules) {
    Dense lhs = CorrectionSum(state.corrections, m);
    AddProduct(lhs, FromTensor(state.adapter.at(lora::LoraBName(m.name))),
               FromTensor(state.adapter.at(lora::LoraAName(m.name))), s);
    EXPECT_LT(MaxAbsDiff(lhs, IdealUpdate(updates, m, s)), 1e-10) << m.name;
  }
}

TEST(FloraStrategyTest, ManyClientsFoldIntoADenseSumAndTheCorrectionStaysExact) {
  auto flora = Make("flora");
  GlobalState state = flora->Initialize(kLayout, std::nullopt).value();
  std::mt19937_64 rng(22);
  std::vector<ClientInfo> clients;
  for (int k = 0; k < 9; ++k) clients.push_back(ClientInfo{"c" + std::to_string(k), {}, {}, {}});
  const std::vector<ClientTask> tasks = flora->Configure(state, 1, clients).value();
  std::vector<ClientUpdate> updates;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    updates.push_back(RandomUpdate(tasks[k], 10 + 7 * k, rng));
  }
  const Result<AggregateReport> report = AggregateAll(*flora, state, 1, updates, tasks);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->metrics.at("dense_modules"), 2);
  for (const auto& m : kModules) {
    EXPECT_LT(MaxAbsDiff(CorrectionSum(state.corrections, m), IdealUpdate(updates, m, 6.0 / 3)),
              1e-10)
        << m.name;
  }
}

TEST(FedExStrategyTest, ReplayAfterTwoRoundsReproducesTheBase) {
  auto fedex = Make("fedex");
  GlobalState state = fedex->Initialize(kLayout, std::nullopt).value();
  std::mt19937_64 rng(2);
  const double s = 2.0;
  std::map<std::string, Dense> expected;  // sum over rounds of s*sum p B A - s*B_g A_g
  for (std::uint64_t round = 1; round <= 2; ++round) {
    const GlobalState start = state;
    const auto updates = Round(*fedex, state, round, Clients({"a", "b", "c", "d"}), rng);
    for (const auto& m : kModules) {
      Dense d = IdealUpdate(updates, m, s);
      AddProduct(d, FromTensor(state.adapter.at(lora::LoraBName(m.name))),
                 FromTensor(state.adapter.at(lora::LoraAName(m.name))), -s);
      if (!expected.contains(m.name)) expected[m.name] = Zero(m.d_out, m.d_in);
      for (std::size_t i = 0; i < d.v.size(); ++i) expected[m.name].v[i] += d.v[i];
    }
  }
  for (const auto& m : kModules) {
    EXPECT_LT(MaxAbsDiff(CorrectionSum(state.corrections, m), expected[m.name]), 1e-10) << m.name;
  }
}

TEST(FloraStrategyTest, StackedCorrectionEqualsTheWeightedUpdatesWithHeterogeneousRanks) {
  StrategyConfig config;
  auto flora = Make("flora", config, Context(/*rank=*/4, /*alpha=*/8));
  GlobalState state = flora->Initialize(kLayout, std::nullopt).value();
  EXPECT_TRUE(state.adapter.empty());
  std::vector<ClientInfo> clients = Clients({"a", "b", "c"});
  // Ranks 4, 2 and (LEGEND-style depth) no LoRA on up_proj for c.
  clients[1].plan.modules = {{kModules[0].name, 2, {}}, {kModules[1].name, 2, {}}};
  clients[2].plan.modules = {{kModules[0].name, 1, {}}, {kModules[1].name, 0, {}}};
  std::mt19937_64 rng(3);
  std::vector<ClientTask> tasks;
  const auto updates = Round(*flora, state, 1, clients, rng, &tasks);
  EXPECT_EQ(tasks[1].expected_upload.at(lora::LoraAName(kModules[0].name)).spec.shape[0], 2);
  EXPECT_FALSE(tasks[2].expected_upload.contains(lora::LoraAName(kModules[1].name)));
  EXPECT_EQ(tasks[0].plan.init, wire::AdapterInit::kFresh);
  const double s = 8.0 / 4;
  const std::vector<double> w = ExampleWeights(updates);
  for (const auto& m : kModules) {
    Dense ideal = Zero(m.d_out, m.d_in);
    for (std::size_t k = 0; k < updates.size(); ++k) {
      if (!updates[k].tensors.contains(lora::LoraAName(m.name))) continue;
      AddProduct(ideal, FromTensor(updates[k].tensors.at(lora::LoraBName(m.name))),
                 FromTensor(updates[k].tensors.at(lora::LoraAName(m.name))), s * w[k]);
    }
    EXPECT_LT(MaxAbsDiff(CorrectionSum(state.corrections, m), ideal), 1e-10) << m.name;
  }
}

TEST(FfaStrategyTest, OnlyBIsTrainedAndTheAverageIsExact) {
  auto ffa = Make("ffa");
  GlobalState state = ffa->Initialize(kLayout, std::nullopt).value();
  const TensorMap initial = state.adapter;
  std::mt19937_64 rng(4);
  std::vector<ClientTask> tasks;
  const auto updates = Round(*ffa, state, 1, Clients({"a", "b"}), rng, &tasks);
  EXPECT_FALSE(tasks[0].plan.train_a);
  EXPECT_FALSE(tasks[0].plan.upload_a);
  for (const auto& [name, e] : tasks[0].expected_upload) {
    EXPECT_TRUE(std::string_view(name).ends_with(".lora_B.weight")) << name;
  }
  const double s = 2.0;
  for (const auto& m : kModules) {
    const std::string a = lora::LoraAName(m.name);
    EXPECT_EQ(state.adapter.at(a), initial.at(a));  // A never moves.
    // The clients' ideal update with the shared A equals the global product exactly.
    std::vector<ClientUpdate> with_a = updates;
    for (auto& u : with_a) u.tensors[a] = initial.at(a);
    Dense global = Zero(m.d_out, m.d_in);
    AddProduct(global, FromTensor(state.adapter.at(lora::LoraBName(m.name))),
               FromTensor(state.adapter.at(a)), s);
    EXPECT_LT(MaxAbsDiff(global, IdealUpdate(with_a, m, s)), 1e-10);
  }
}

// A^T-free check of orthonormal rows: A A^T = I (r x r).
double OrthonormalRowsError(const Dense& a) {
  double worst = 0;
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.rows; ++j) {
      double dot = 0;
      for (std::int64_t c = 0; c < a.cols; ++c) dot += a.at(i, c) * a.at(j, c);
      worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  }
  return worst;
}

// FedSVD is FFA-LoRA's round (only B trained, averaged exactly against the round's A) followed by
// a re-factoring that keeps every module's product and makes A's rows orthonormal.
TEST(FedSvdStrategyTest, RefactoringKeepsTheExactProductAndMakesARowsOrthonormal) {
  auto fedsvd = Make("fedsvd");
  GlobalState state = fedsvd->Initialize(kLayout, std::nullopt).value();
  const TensorMap initial = state.adapter;
  std::mt19937_64 rng(8);
  std::vector<ClientTask> tasks;
  const auto updates = Round(*fedsvd, state, 1, Clients({"a", "b", "c"}), rng, &tasks);
  EXPECT_FALSE(tasks[0].plan.train_a);
  EXPECT_FALSE(tasks[0].plan.upload_a);
  const double s = 2.0;
  for (const auto& m : kModules) {
    const std::string a = lora::LoraAName(m.name), b = lora::LoraBName(m.name);
    EXPECT_NE(state.adapter.at(a), initial.at(a));  // A was re-chosen...
    EXPECT_LT(OrthonormalRowsError(FromTensor(state.adapter.at(a))), 1e-12) << m.name;
    // ...and the product is still the clients' ideal update with the round's shared A.
    std::vector<ClientUpdate> with_a = updates;
    for (auto& u : with_a) u.tensors[a] = initial.at(a);
    Dense global = Zero(m.d_out, m.d_in);
    AddProduct(global, FromTensor(state.adapter.at(b)), FromTensor(state.adapter.at(a)), s);
    EXPECT_LT(MaxAbsDiff(global, IdealUpdate(with_a, m, s)), 1e-10) << m.name;
  }
  // The next round's tasks train B against the new A.
  const std::vector<ClientTask> next = fedsvd->Configure(state, 2, Clients({"a"})).value();
  const std::string a0 = lora::LoraAName(kModules[0].name);
  EXPECT_EQ(next[0].tensors.at(a0), state.adapter.at(a0));
}

TEST(FedSvdStrategyTest, ARankDeficientProductKeepsItsFactorsAndThePeriodIsHonoured) {
  StrategyConfig config;
  config.fedsvd.period = 2;
  auto fedsvd = Make("fedsvd", config);
  GlobalState state = fedsvd->Initialize(kLayout, std::nullopt).value();
  const TensorMap initial = state.adapter;
  std::mt19937_64 rng(9);
  Round(*fedsvd, state, 1, Clients({"a", "b"}), rng);
  const std::string a0 = lora::LoraAName(kModules[0].name);
  EXPECT_EQ(state.adapter.at(a0), initial.at(a0));  // Round 1 of period 2: no refactoring.
  // Round 2 with every upload's B zero: the product has rank 0, so A stays as it is.
  std::vector<ClientTask> tasks = fedsvd->Configure(state, 2, Clients({"a", "b"})).value();
  std::vector<ClientUpdate> zero;
  for (const ClientTask& t : tasks) {
    ClientUpdate u = RandomUpdate(t, 10, rng);
    for (auto& [name, tensor] : u.tensors) {
      tensor = FromDoubles(tensor.dtype, tensor.shape, std::vector<double>(tensor.numel(), 0.0));
    }
    zero.push_back(std::move(u));
  }
  const Result<AggregateReport> report = AggregateAll(*fedsvd, state, 2, zero, tasks);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->metrics.at("fedsvd_kept"), 2);
  EXPECT_EQ(report->metrics.at("fedsvd_refactored"), 0);
  EXPECT_EQ(state.adapter.at(a0), initial.at(a0));
}

TEST(FedSaStrategyTest, OnlyAIsSharedAndEachClientKeepsItsB) {
  auto fedsa = Make("fedsa");
  GlobalState state = fedsa->Initialize(kLayout, std::nullopt).value();
  for (const auto& [name, t] : state.adapter) {
    EXPECT_TRUE(std::string_view(name).ends_with(".lora_A.weight")) << name;
  }
  std::mt19937_64 rng(5);
  std::vector<ClientTask> tasks;
  const auto updates = Round(*fedsa, state, 1, Clients({"a", "b", "c"}), rng, &tasks);
  EXPECT_EQ(tasks[0].plan.init, wire::AdapterInit::kLocalB);
  EXPECT_FALSE(tasks[0].plan.upload_b);
  const std::vector<double> w = ExampleWeights(updates);
  const std::string a = lora::LoraAName(kModules[0].name);
  Dense mean = Zero(3, kModules[0].d_in);
  for (std::size_t k = 0; k < updates.size(); ++k) {
    const Dense x = FromTensor(updates[k].tensors.at(a));
    for (std::size_t i = 0; i < mean.v.size(); ++i) mean.v[i] += w[k] * x.v[i];
  }
  EXPECT_LT(MaxAbsDiff(FromTensor(state.adapter.at(a)), mean), 1e-12);
  EXPECT_EQ(fedsa->Evaluation(state, Clients({"a"})[0]).plan.init, wire::AdapterInit::kLocalB);
}

TEST(FedSbStrategyTest, ClientInitialisesThenOnlyRTravelsAndItsAverageIsExact) {
  auto fedsb = Make("fedsb");
  GlobalState state = fedsb->Initialize(kLayout, std::nullopt).value();
  ASSERT_TRUE(fedsb->client_initialization()->NeedsClientInit(state));
  std::vector<ClientInfo> clients = Clients({"a", "b"});
  const ClientTask init = fedsb->client_initialization()->ConfigureInit(state, clients[0]).value();
  EXPECT_EQ(init.plan.mode, wire::AdapterMode::kLoraSbInit);
  std::mt19937_64 rng(6);
  ASSERT_TRUE(fedsb->client_initialization()->AcceptInit(state, RandomUpdate(init, 1, rng)).ok());
  EXPECT_FALSE(fedsb->client_initialization()->NeedsClientInit(state));

  std::vector<ClientTask> tasks = fedsb->Configure(state, 1, clients).value();
  const std::string b = lora::LoraBName(kModules[0].name);
  EXPECT_TRUE(tasks[0].tensors.contains(b));  // Frozen factors ship once per session...
  clients[1].cached.insert(std::string(FedSb::kFrozenCacheKey));
  tasks = fedsb->Configure(state, 1, clients).value();
  EXPECT_FALSE(tasks[1].tensors.contains(b));  // ...and not again.
  for (const auto& [name, e] : tasks[0].expected_upload) {  // Upload: r x r per module only.
    EXPECT_TRUE(std::string_view(name).ends_with(".lora_R.weight")) << name;
    EXPECT_EQ(e.spec.shape, (std::vector<std::int64_t>{3, 3}));
  }
  std::vector<ClientUpdate> updates = {RandomUpdate(tasks[0], 3, rng),
                                       RandomUpdate(tasks[1], 9, rng)};
  ASSERT_TRUE(AggregateAll(*fedsb, state, 1, updates, tasks).ok());
  const std::vector<double> w = ExampleWeights(updates);
  for (const auto& m : kModules) {
    const Dense bm = FromTensor(state.extra.at(lora::LoraBName(m.name)));
    const Dense am = FromTensor(state.extra.at(lora::LoraAName(m.name)));
    const std::string r = m.name + ".lora_R.weight";
    Dense global = Zero(m.d_out, 3), ideal = Zero(m.d_out, 3);
    AddProduct(global, bm, FromTensor(state.adapter.at(r)));
    for (std::size_t k = 0; k < 2; ++k) AddProduct(ideal, bm, FromTensor(updates[k].tensors.at(r)), w[k]);
    Dense g2 = Zero(m.d_out, m.d_in), i2 = Zero(m.d_out, m.d_in);
    AddProduct(g2, global, am);
    AddProduct(i2, ideal, am);
    EXPECT_LT(MaxAbsDiff(g2, i2), 1e-12) << m.name;
  }
}

TEST(MakeStrategyTest, EveryCatalogueNameBuildsAndUnknownNamesListThem) {
  for (const std::string& name : StrategyNames()) {
    StrategyConfig c;
    c.name = name;
    const auto s = MakeStrategy(c, Context());
    ASSERT_TRUE(s.ok()) << name << ": " << s.status().ToString();
    EXPECT_EQ((*s)->name(), name);
  }
  StrategyConfig bad;
  bad.name = "fedprox";
  const auto r = MakeStrategy(bad, Context());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("hetlora"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::server
