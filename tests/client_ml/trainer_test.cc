#include "client/train/trainer.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "client/data/text_dataset.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

// One speaker partition of tinyshakespeare (GLOUCESTER's among others), tokenized once.
const ClientData& SpeakerData() {
  static const ClientData data = [] {
    DataConfig config;
    config.path = ShakespearePath();
    config.partition = "speaker";
    config.num_partitions = 8;
    config.partition_index = 0;
    config.heldout_fraction = 0.1;
    Result<ClientData> d = LoadClientData(config, Tok512());
    FEDLORA_CHECK_MSG(d.ok(), d.status().ToString());
    return std::move(d).value();
  }();
  return data;
}

wire::LoraSpec TrainerLoraSpec(double dropout = 0.0) {
  wire::LoraSpec spec;
  spec.rank = 8;
  spec.alpha = 16;
  spec.dropout = dropout;
  spec.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return spec;
}

wire::TrainSpec TrainerTrainSpec(std::uint32_t steps) {
  wire::TrainSpec spec;
  spec.learning_rate = 5e-3;
  spec.warmup_steps = 5;
  spec.local_steps = steps;
  spec.batch_size = 8;
  spec.seq_len = 128;
  spec.grad_clip = 1.0;
  return spec;
}

std::unique_ptr<LoraAdapter> NewTrainerAdapter(double dropout = 0.0, std::uint64_t seed = 7) {
  return std::move(LoraAdapter::Create(Stories260K(), TrainerLoraSpec(dropout), seed)).value();
}

double HeldoutLoss(ModuleAdapter* adapter) {
  const Result<EvalStats> stats =
      EvaluateLoss(Stories260K(), adapter, SpeakerData().heldout, {.seq_len = 128, .batch_size = 16});
  FEDLORA_CHECK_MSG(stats.ok(), stats.status().ToString());
  return stats->loss;
}

TEST(TrainerTest, TrainingOnOneSpeakerPartitionLowersHeldoutLossWellBelowTheBase) {
  const double base = HeldoutLoss(nullptr);
  EXPECT_NEAR(base, 5.0, 0.3);  // 128-token windows: less context than the 512-token golden.
  auto adapter = NewTrainerAdapter();
  const Result<TrainStats> stats =
      TrainLora(Stories260K(), *adapter, SpeakerData().train, TrainerTrainSpec(40), 1);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->steps, 40u);
  EXPECT_EQ(stats->samples, 320u);
  EXPECT_EQ(stats->tokens, 320u * 128);
  EXPECT_FALSE(adapter->training());
  const double tuned = HeldoutLoss(adapter.get());
  EXPECT_LT(tuned, base - 1.0) << "base " << base << " train loss " << stats->loss;
  EXPECT_LT(stats->loss, base);
}

TEST(TrainerTest, TrainingIsBitReproducibleFromTheSameSeeds) {
  const auto run = [](std::uint64_t order_seed) {
    auto adapter = NewTrainerAdapter(/*dropout=*/0.1);
    adapter->SetSeed(3);
    const Result<TrainStats> stats =
        TrainLora(Stories260K(), *adapter, SpeakerData().train, TrainerTrainSpec(6), order_seed);
    FEDLORA_CHECK_MSG(stats.ok(), stats.status().ToString());
    return *adapter->Export(DType::kF32);
  };
  const TensorMap first = run(11);
  EXPECT_EQ(run(11), first);
  EXPECT_NE(run(12), first);
}

TEST(TrainerTest, ConcurrentTrainingOnASharedModelMatchesSequentialTraining) {
  const auto train = [](std::uint64_t seed) {
    auto adapter = NewTrainerAdapter(/*dropout=*/0.1, seed);
    const Result<TrainStats> stats =
        TrainLora(Stories260K(), *adapter, SpeakerData().train, TrainerTrainSpec(3), seed);
    FEDLORA_CHECK_MSG(stats.ok(), stats.status().ToString());
    return *adapter->Export(DType::kF32);
  };
  const std::vector<TensorMap> sequential = {train(1), train(2), train(3)};
  std::vector<TensorMap> concurrent(3);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { concurrent[i] = train(i + 1); });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(concurrent, sequential);
}

TEST(TrainerTest, BaseWeightsStayUnchangedAndWithoutGradAfterTraining) {
  std::map<std::string, at::Tensor> before;
  for (const std::string& name : Stories260K().TensorNames()) {
    before[name] = Stories260K().Weight(name).clone();
  }
  auto adapter = NewTrainerAdapter();
  ASSERT_TRUE(TrainLora(Stories260K(), *adapter, SpeakerData().train, TrainerTrainSpec(3), 1).ok());
  for (const auto& [name, w] : before) {
    const at::Tensor now = Stories260K().Weight(name);
    EXPECT_TRUE(at::equal(now, w)) << name;
    EXPECT_FALSE(now.requires_grad()) << name;
    EXPECT_FALSE(now.grad().defined()) << name;
  }
}

TEST(TrainerTest, OneEpochVisitsEveryWindowOnce) {
  const std::vector<TokenId> stream(SpeakerData().train.begin(),
                                    SpeakerData().train.begin() + 20 * 64 + 10);
  wire::TrainSpec spec = TrainerTrainSpec(0);
  spec.local_epochs = 1;
  spec.seq_len = 64;
  spec.batch_size = 6;
  auto adapter = NewTrainerAdapter();
  const Result<TrainStats> stats = TrainLora(Stories260K(), *adapter, stream, spec, 1);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->steps, 4u);     // ceil(20 / 6).
  EXPECT_EQ(stats->samples, 20u);  // The 10-token tail is dropped.
  EXPECT_EQ(stats->tokens, 20u * 64);
}

TEST(TrainerTest, ZeroLearningRateLeavesTheAdapterUnchanged) {
  auto adapter = NewTrainerAdapter();
  const TensorMap before = *adapter->Export(DType::kF32);
  wire::TrainSpec spec = TrainerTrainSpec(2);
  spec.learning_rate = 0.0;
  ASSERT_TRUE(TrainLora(Stories260K(), *adapter, SpeakerData().train, spec, 1).ok());
  EXPECT_EQ(*adapter->Export(DType::kF32), before);
}

TEST(TrainerTest, StopRequestedBeforeAStepCancelsTraining) {
  std::stop_source stop;
  stop.request_stop();
  auto adapter = NewTrainerAdapter();
  const Result<TrainStats> stats =
      TrainLora(Stories260K(), *adapter, SpeakerData().train, TrainerTrainSpec(5), 1, stop.get_token());
  EXPECT_EQ(stats.status().code(), StatusCode::kCancelled);
  EXPECT_FALSE(adapter->training());
  EXPECT_EQ(EvaluateLoss(Stories260K(), nullptr, SpeakerData().heldout, {}, stop.get_token())
                .status()
                .code(),
            StatusCode::kCancelled);
}

TEST(TrainerTest, RejectsSpecValuesOutsideTheirRangeNamingTheField) {
  auto adapter = NewTrainerAdapter();
  wire::TrainSpec spec = TrainerTrainSpec(1);
  spec.seq_len = 513;
  EXPECT_THAT(TrainLora(Stories260K(), *adapter, SpeakerData().train, spec, 1).status().message(),
              HasSubstr("train.seq_len"));
  spec = TrainerTrainSpec(1);
  spec.batch_size = 0;
  EXPECT_THAT(TrainLora(Stories260K(), *adapter, SpeakerData().train, spec, 1).status().message(),
              HasSubstr("train.batch_size"));
  spec = TrainerTrainSpec(1);
  spec.learning_rate = -1;
  EXPECT_EQ(TrainLora(Stories260K(), *adapter, SpeakerData().train, spec, 1).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(TrainLora(Stories260K(), *adapter, {}, TrainerTrainSpec(1), 1).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(TrainerTest, EvaluationCountsWindowsAndTokensAndHonoursItsCaps) {
  const std::vector<TokenId> stream(SpeakerData().heldout.begin(),
                                    SpeakerData().heldout.begin() + 10 * 32 + 5);
  Result<EvalStats> all = EvaluateLoss(Stories260K(), nullptr, stream, {.seq_len = 32, .batch_size = 4});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->windows, 10u);
  EXPECT_EQ(all->tokens, 320u);
  Result<EvalStats> batches = EvaluateLoss(Stories260K(), nullptr, stream,
                                           {.seq_len = 32, .batch_size = 4, .max_batches = 2});
  EXPECT_EQ(batches->windows, 8u);
  Result<EvalStats> windows = EvaluateLoss(Stories260K(), nullptr, stream,
                                           {.seq_len = 32, .batch_size = 4, .max_windows = 3});
  EXPECT_EQ(windows->windows, 3u);
  Result<EvalStats> one_batch = EvaluateLoss(Stories260K(), nullptr, stream,
                                             {.seq_len = 32, .batch_size = 16});
  EXPECT_NEAR(one_batch->loss, all->loss, 1e-5);  // Batching does not change the mean.
}

TEST(TrainerTest, EvaluationMatchesAHandComputedNllOfOneWindow) {
  const std::vector<TokenId> stream(SpeakerData().heldout.begin(), SpeakerData().heldout.begin() + 16);
  const Result<EvalStats> stats = EvaluateLoss(Stories260K(), nullptr, stream, {.seq_len = 16});
  ASSERT_TRUE(stats.ok());
  std::vector<std::int64_t> input = {Tokenizer::kBos};
  input.insert(input.end(), stream.begin(), stream.end() - 1);
  const at::Tensor logp = at::log_softmax(ForwardOrDie(Stories260K(), Tokens({input}))[0], -1);
  double nll = 0.0;
  for (int t = 0; t < 16; ++t) nll -= logp[t][stream[t]].item<double>();
  EXPECT_NEAR(stats->loss, nll / 16, 1e-5);
  EXPECT_EQ(stats->tokens, 16u);
}

}  // namespace
}  // namespace fedlora::client
