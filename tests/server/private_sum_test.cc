#include "server/private_sum.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "server/strategies/fedavg.h"

namespace fedlora::server {
namespace {

constexpr std::int64_t kOut = 5, kIn = 3, kRank = 2;
const char* const kA = "m.lora_A.weight";
const char* const kB = "m.lora_B.weight";

std::vector<double> Normal(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

FedAvg MeanOfChanges() {
  return FedAvg({.weighting = Weighting::kUniform, .state_dtype = DType::kF64});
}

PrivateRoundParams Params(double clip, double sigma, double denominator,
                          std::vector<wire::SecAggSlot> slots = {{kA, {kRank, kIn}},
                                                                 {kB, {kOut, kRank}}}) {
  PrivateRoundParams p;
  p.slots = std::move(slots);
  p.clip = clip;
  p.noise_multiplier = sigma;
  p.denominator = denominator;
  p.noise_seed.fill(42);
  return p;
}

// The global adapter plus `change` (A's then B's elements, as one vector).
ClientUpdate Moved(const std::string& id, const GlobalState& state,
                   const std::vector<double>& change) {
  ClientUpdate u{id, 10, 10, {}, {}};
  std::size_t at = 0;
  for (const char* name : {kA, kB}) {
    std::vector<double> v = ToDoubles(state.adapter.at(name));
    for (double& x : v) x += change[at++];
    u.tensors[name] = MakeF64(state.adapter.at(name).shape, v);
  }
  return u;
}

// No noise: the released adapter is G + sum_i clip(change_i) / m exactly, with the mean taken
// over the fixed denominator m (a sampled client that never uploaded counts as no change), and
// the changes above C counted.
TEST(PrivateSumTest, WithoutNoiseTheAggregateIsTheGlobalPlusTheClippedChangesOverTheDenominator) {
  std::mt19937_64 rng(7);
  GlobalState state;
  state.adapter[kA] = MakeF64({kRank, kIn}, Normal(kRank * kIn, rng));
  state.adapter[kB] = MakeF64({kOut, kRank}, Normal(kOut * kRank, rng));
  ClientTask task;
  task.tensors = state.adapter;
  const std::size_t n = kRank * kIn + kOut * kRank;
  std::vector<std::vector<double>> changes;
  for (double norm : {0.5, 2.0, 10.0}) {
    std::vector<double> c = Normal(n, rng);
    double s = 0;
    for (double x : c) s += x * x;
    for (double& x : c) x *= norm / std::sqrt(s);
    changes.push_back(std::move(c));
  }
  FedAvg strategy = MeanOfChanges();
  PrivateRoundTally tally;
  std::unique_ptr<RoundAccumulator> acc =
      MakePrivateAccumulator(strategy, 1, Params(/*clip=*/1.0, /*sigma=*/0.0, 4.0), &tally);
  const char* ids[] = {"a", "b", "c"};
  for (std::size_t k = 0; k < changes.size(); ++k) {
    ASSERT_TRUE(acc->Fold(Moved(ids[k], state, changes[k]), task).ok());
  }
  EXPECT_EQ(tally.folded, 3u);
  EXPECT_EQ(tally.clipped, 2u);
  GlobalState out = state;
  ASSERT_TRUE(acc->Finish(out, MemoryUploads({}, {})).ok());
  std::vector<double> expected(n, 0.0);
  for (std::size_t k = 0; k < changes.size(); ++k) {
    const double scale = std::min(1.0, 1.0 / (k == 0 ? 0.5 : k == 1 ? 2.0 : 10.0));
    for (std::size_t i = 0; i < n; ++i) expected[i] += scale * changes[k][i] / 4.0;
  }
  std::size_t at = 0;
  for (const char* name : {kA, kB}) {
    const std::vector<double> g = ToDoubles(state.adapter.at(name));
    const std::vector<double> got = ToDoubles(out.adapter.at(name));
    for (std::size_t i = 0; i < g.size(); ++i, ++at) {
      EXPECT_NEAR(got[i], g[i] + expected[at], 1e-10) << name << "[" << i << "]";
    }
  }
}

// Distributed DP: the secure sum of 3 inputs G + change_k (the clients' noise already in them)
// becomes, per slot, m G + sum_k change_k with weight m, so FedAvg releases G + sum / m; a delta
// strategy's sum (of changes already) is only re-weighted.
TEST(PrivateSumTest, ASecureSumOfInputsBecomesTheGlobalPlusTheChangesOverTheDenominator) {
  std::mt19937_64 rng(9);
  GlobalState state;
  state.adapter[kA] = MakeF64({kRank, kIn}, Normal(kRank * kIn, rng));
  state.adapter[kB] = MakeF64({kOut, kRank}, Normal(kOut * kRank, rng));
  secagg::SecureSum sum;
  std::map<std::string, std::vector<double>, std::less<>> changes;
  for (const char* name : {kA, kB}) {
    const std::vector<double> g = ToDoubles(state.adapter.at(name));
    std::vector<double> total(g.size(), 0.0), inputs(g.size(), 0.0);
    for (int k = 0; k < 3; ++k) {
      const std::vector<double> c = Normal(g.size(), rng, 0.1);
      for (std::size_t i = 0; i < g.size(); ++i) {
        inputs[i] += g[i] + c[i];
        total[i] += c[i];
      }
    }
    sum.weighted[name] = MakeF64(state.adapter.at(name).shape, inputs);
    sum.weights[name] = 3.0;
    changes[name] = total;
  }
  Result<secagg::SecureSum> release = PrivateReleaseOf(sum, state.adapter, false, 5.0);
  ASSERT_TRUE(release.ok()) << release.status().ToString();
  FedAvg strategy = MeanOfChanges();
  GlobalState out = state;
  ASSERT_TRUE(strategy.FinishSecure(out, 1, *release).ok());
  for (const char* name : {kA, kB}) {
    EXPECT_EQ(release->weights.at(name), 5.0);
    const std::vector<double> g = ToDoubles(state.adapter.at(name));
    const std::vector<double> got = ToDoubles(out.adapter.at(name));
    for (std::size_t i = 0; i < g.size(); ++i) {
      EXPECT_NEAR(got[i], g[i] + changes[name][i] / 5.0, 1e-10) << name << "[" << i << "]";
    }
  }
  Result<secagg::SecureSum> deltas = PrivateReleaseOf(sum, state.adapter, true, 5.0);
  ASSERT_TRUE(deltas.ok());
  EXPECT_EQ(deltas->weighted.at(kA), sum.weighted.at(kA));
  EXPECT_EQ(deltas->weights.at(kA), 5.0);
  GlobalState missing;
  EXPECT_EQ(PrivateReleaseOf(sum, missing.adapter, false, 5.0).status().code(),
            StatusCode::kInternal);
}

// The noise on the released mean has standard deviation sigma C / m on every element. 20 000
// elements: the sample deviation's standard error is 0.5%; the tolerance is 3%.
TEST(PrivateSumTest, NoiseOnTheMeanHasDeviationSigmaTimesClipOverTheDenominator) {
  GlobalState state;
  state.adapter["w.lora_A.weight"] = MakeF64({100, 200}, std::vector<double>(20000, 0.25));
  FedAvg strategy = MeanOfChanges();
  std::unique_ptr<RoundAccumulator> acc =
      MakePrivateAccumulator(strategy, 1, Params(0.2, 1.5, 3.0, {{"w.lora_A.weight", {100, 200}}}));
  GlobalState out = state;  // Nobody uploaded: what is released is the global plus noise.
  ASSERT_TRUE(acc->Finish(out, MemoryUploads({}, {})).ok());
  const std::vector<double> got = ToDoubles(out.adapter.at("w.lora_A.weight"));
  double mean = 0, squares = 0;
  for (double x : got) mean += x - 0.25;
  mean /= static_cast<double>(got.size());
  for (double x : got) squares += (x - 0.25 - mean) * (x - 0.25 - mean);
  const double sd = std::sqrt(squares / static_cast<double>(got.size() - 1));
  EXPECT_NEAR(sd, 1.5 * 0.2 / 3.0, 0.03 * 0.1);
  EXPECT_NEAR(mean, 0.0, 0.05 * 0.1);
}

TEST(PrivateSumTest, AnUploadWithATensorTheRoundDoesNotReleaseIsRefusedWhole) {
  GlobalState state;
  state.adapter[kA] = MakeF64({kRank, kIn}, std::vector<double>(kRank * kIn, 0.0));
  state.adapter[kB] = MakeF64({kOut, kRank}, std::vector<double>(kOut * kRank, 0.0));
  ClientTask task;
  task.tensors = state.adapter;
  FedAvg strategy = MeanOfChanges();
  PrivateRoundTally tally;
  std::unique_ptr<RoundAccumulator> acc =
      MakePrivateAccumulator(strategy, 1, Params(1.0, 0.0, 1.0, {{kA, {kRank, kIn}}}), &tally);
  ClientUpdate u = Moved("a", state, std::vector<double>(kRank * kIn + kOut * kRank, 0.1));
  const Status s = acc->Fold(u, task);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(kB), std::string::npos) << s.message();
  EXPECT_EQ(tally.folded, 0u);
  GlobalState out = state;
  ASSERT_TRUE(acc->Finish(out, MemoryUploads({}, {})).ok());
  EXPECT_EQ(ToDoubles(out.adapter.at(kA)), std::vector<double>(kRank * kIn, 0.0));
}

}  // namespace
}  // namespace fedlora::server
