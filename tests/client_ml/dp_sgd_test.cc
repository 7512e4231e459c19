#include "client/train/dp_sgd.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/train/dp_sgd_budget.h"
#include "client/train/private_training.h"
#include "common/privacy/rdp_accountant.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace dp_sgd_test {

using namespace ml_test;  // NOLINT: test helpers.

const std::vector<TokenId>& Stream() {
  static const std::vector<TokenId> stream =
      Tok512().Encode(ReadFileBytes(ShakespearePath()).substr(0, 20000), false, false);
  return stream;
}

std::unique_ptr<LoraAdapter> MakeAdapter() {
  wire::LoraSpec spec;
  spec.rank = 4;
  spec.alpha = 8;
  spec.targets = {"q_proj", "v_proj", "gate_proj", "down_proj"};
  Result<std::unique_ptr<LoraAdapter>> adapter = LoraAdapter::Create(Stories260K(), spec, 5);
  FEDLORA_CHECK_MSG(adapter.ok(), adapter.status().ToString());
  return std::move(adapter).value();
}

wire::TrainSpec Spec(std::uint32_t steps) {
  wire::TrainSpec spec;
  spec.learning_rate = 5e-3;
  spec.local_steps = steps;
  spec.batch_size = 8;
  spec.seq_len = 32;
  spec.weight_decay = 0;
  return spec;
}

crypto::Seed FixedSeed(std::uint8_t b) {
  crypto::Seed seed;
  seed.fill(b);
  return seed;
}

std::vector<at::Tensor> Snapshot(const LoraAdapter& adapter) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : adapter.Parameters()) out.push_back(p.detach().clone());
  return out;
}

std::string TempPath(const std::string& name) {
  const std::string path =
      ::testing::TempDir() + "fedlora_dpsgd_" + std::to_string(::getpid()) + "_" + name;
  std::filesystem::remove_all(path);
  return path;
}

TEST(DpSgdTest, TheSameSeedTrainsTheSameAdapterAndBatchesAverageQTimesTheExamples) {
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  const DpSgdOptions options{
      .clip = 0.5, .noise_multiplier = 1.0, .sample_rate = 0.05, .seed = FixedSeed(3)};
  std::vector<at::Tensor> results[2];
  std::uint64_t samples = 0;
  constexpr std::uint32_t kSteps = 12;
  for (auto& result : results) {
    std::unique_ptr<LoraAdapter> adapter = MakeAdapter();
    Result<DpSgdStats> stats =
        TrainLoraDpSgd(Stories260K(), *adapter, source, Spec(kSteps), options);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->train.steps, kSteps);
    samples = stats->train.samples;
    result = Snapshot(*adapter);
  }
  for (std::size_t k = 0; k < results[0].size(); ++k)
    EXPECT_TRUE(results[0][k].equal(results[1][k]));
  // Poisson sampling: the total is Binomial(steps x N, q); within 6 standard deviations.
  const double n = static_cast<double>(kSteps * source.size());
  const double mean = 0.05 * n;
  EXPECT_NEAR(static_cast<double>(samples), mean, 6 * std::sqrt(mean * 0.95));
}

TEST(DpSgdTest, AnEmptyBatchStillGetsNoiseOfDeviationSigmaCOverQN) {
  // q so small that no example is sampled: the step's gradient is the noise over q N alone.
  // AdamW with beta1 = beta2 = 0 and lr = eps = 1e9 moves each coordinate by -g/(1 + |g|/1e9),
  // i.e. by -g to 1e-5, so the change of the factors shows the noise's deviation.
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  wire::TrainSpec spec = Spec(1);
  spec.beta1 = 0;
  spec.beta2 = 0;
  spec.learning_rate = 1e9;
  spec.eps = 1e9;
  constexpr double kQ = 1e-9, kSigma = 2.0, kClip = 1e-3;
  std::unique_ptr<LoraAdapter> adapter = MakeAdapter();
  const std::vector<at::Tensor> before = Snapshot(*adapter);
  Result<DpSgdStats> stats = TrainLoraDpSgd(
      Stories260K(), *adapter, source, spec,
      {.clip = kClip, .noise_multiplier = kSigma, .sample_rate = kQ, .seed = FixedSeed(9)});
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ASSERT_EQ(stats->train.samples, 0u);
  EXPECT_EQ(stats->empty_steps, 1u);
  std::vector<at::Tensor> changes;
  const std::vector<at::Tensor> after = Snapshot(*adapter);
  for (std::size_t k = 0; k < after.size(); ++k) {
    changes.push_back((after[k] - before[k]).to(at::kDouble).reshape({-1}));
  }
  const at::Tensor all = at::cat(changes);
  ASSERT_GT(all.numel(), 5000);
  const double expected = kSigma * kClip / (kQ * static_cast<double>(source.size()));
  EXPECT_NEAR(all.std().item<double>(), expected, 0.05 * expected);
  EXPECT_NEAR(all.mean().item<double>(), 0.0, 0.05 * expected);
}

TEST(DpSgdTest, RefusesOptionsOutOfRangeNamingTheKey) {
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  std::unique_ptr<LoraAdapter> adapter = MakeAdapter();
  for (const DpSgdOptions& bad :
       {DpSgdOptions{.clip = 0, .noise_multiplier = 1, .sample_rate = 0.1},
        DpSgdOptions{.clip = 1, .noise_multiplier = -1, .sample_rate = 0.1},
        DpSgdOptions{.clip = 1, .noise_multiplier = 1, .sample_rate = 0}}) {
    const Result<DpSgdStats> stats = TrainLoraDpSgd(Stories260K(), *adapter, source, Spec(1), bad);
    EXPECT_EQ(stats.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(stats.status().message().find("privacy.dp_sgd."), std::string::npos);
  }
}

TEST(DpSgdBudgetTest, RecordedStepsSurviveReopeningAndEqualTheAccountantsEpsilon) {
  const std::string path = TempPath("budget") + "/dp_sgd_budget.json";
  {
    Result<DpSgdBudget> budget = DpSgdBudget::Open(path, 8, 1e-5);
    ASSERT_TRUE(budget.ok()) << budget.status().ToString();
    EXPECT_EQ(budget->EpsilonSpent(), 0.0);
    ASSERT_TRUE(budget->Record(0.02, 1.1, 50).ok());
    ASSERT_TRUE(budget->Record(0.05, 1.3, 20).ok());
  }
  Result<DpSgdBudget> reopened = DpSgdBudget::Open(path, 8, 1e-5);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  EXPECT_EQ(reopened->steps(), 70u);
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.Compose(0.02, 1.1, 50).ok());
  ASSERT_TRUE(accountant.Compose(0.05, 1.3, 20).ok());
  EXPECT_DOUBLE_EQ(reopened->EpsilonSpent(), accountant.Epsilon(1e-5)->epsilon);
  EXPECT_GT(reopened->EpsilonAfter(0.05, 1.3, 1), reopened->EpsilonSpent());
}

TEST(DpSgdBudgetTest, ADamagedBudgetFileIsAnErrorNamingItNeverAFreshBudget) {
  const std::string dir = TempPath("damaged");
  std::filesystem::create_directories(dir);
  const std::string path =
      WriteTempFile("fedlora_dpsgd_" + std::to_string(::getpid()) + "_damaged/dp_sgd_budget.json",
                    "{\"dp_sgd_steps\": [{\"sample_rate\": 0.1, \"noise_mult");
  const Result<DpSgdBudget> budget = DpSgdBudget::Open(path, 8, 1e-5);
  EXPECT_EQ(budget.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(budget.status().message().find(path), std::string::npos);
}

TEST(PrivateTrainerTest, ARoundPastTheClientsBudgetIsRefusedBeforeAnyTraining) {
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  const wire::TrainSpec spec = Spec(10);
  const double q = 8.0 / static_cast<double>(source.size());  // batch_size / examples.
  // A budget that holds one round of 10 steps but not two.
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.Compose(q, 1.0, 10).ok());
  const double one = accountant.Epsilon(1e-5)->epsilon;
  ASSERT_TRUE(accountant.Compose(q, 1.0, 10).ok());
  const double two = accountant.Epsilon(1e-5)->epsilon;
  const DpSgdConfig config{.enabled = true,
                           .clip = 0.5,
                           .noise_multiplier = 1.0,
                           .target_epsilon = (one + two) / 2,
                           .delta = 1e-5};
  const std::string path = TempPath("trainer") + "/dp_sgd_budget.json";
  Result<PrivateTrainer> trainer = PrivateTrainer::Open(config, "ann", path);
  ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();

  std::unique_ptr<LoraAdapter> adapter = MakeAdapter();
  wire::Metrics metrics;
  Result<TrainStats> first =
      trainer->Train(Stories260K(), *adapter, source, spec, 1, {}, {}, metrics);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_NEAR(metrics.at("dp_sgd_epsilon"), one, 1e-9 * one);
  EXPECT_EQ(metrics.at("dp_sgd_steps"), 10.0);
  EXPECT_DOUBLE_EQ(metrics.at("dp_sgd_sample_rate"), q);
  EXPECT_TRUE(metrics.contains("dp_sgd_clipped_fraction"));

  const std::vector<at::Tensor> before = Snapshot(*adapter);
  wire::Metrics refused_metrics;
  Result<TrainStats> second =
      trainer->Train(Stories260K(), *adapter, source, spec, 2, {}, {}, refused_metrics);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().detail(),
            static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
  EXPECT_NE(second.status().message().find("privacy.dp_sgd.target_epsilon"), std::string::npos);
  const std::vector<at::Tensor> after = Snapshot(*adapter);
  for (std::size_t k = 0; k < after.size(); ++k) EXPECT_TRUE(after[k].equal(before[k]));
  EXPECT_TRUE(refused_metrics.empty());

  // A restarted client reads what it spent: the refusal stands.
  Result<PrivateTrainer> restarted = PrivateTrainer::Open(config, "ann", path);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  EXPECT_EQ(restarted->budget().steps(), 10u);
  EXPECT_FALSE(
      restarted->Train(Stories260K(), *adapter, source, spec, 2, {}, {}, refused_metrics).ok());
}

}  // namespace dp_sgd_test
}  // namespace fedlora::client
