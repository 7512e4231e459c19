#include "client/local_worker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <thread>

#include "client/data/text_dataset.h"
#include "client/model/tokenizer.h"
#include "client/train/progress.h"
#include "tests/client_ml/ml_test_util.h"
#include "tests/testing/tensor_compare.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

std::shared_ptr<const ModelAssets> SharedAssets() {
  static const std::shared_ptr<const ModelAssets> assets = [] {
    ModelConfig config;
    config.path = LegacyModelPath();
    config.tokenizer = TokenizerPath();
    Result<std::shared_ptr<const ModelAssets>> a = LoadModelAssets(config);
    FEDLORA_CHECK_MSG(a.ok(), a.status().ToString());
    return std::move(a).value();
  }();
  return assets;
}

ClientConfig WorkerConfig(const std::string& name, std::uint32_t partition = 1) {
  ClientConfig config;
  config.device = "cpu";  // Where the shared test model lives.
  config.name = name;
  config.data.path = ShakespearePath();
  config.data.partition = "speaker";
  config.data.num_partitions = 8;
  config.data.partition_index = partition;
  config.data.heldout_fraction = 0.1;
  config.capabilities.max_rank = 16;
  return config;
}

std::unique_ptr<Worker> MakeWorkerOrDie(const ClientConfig& config) {
  Result<std::unique_ptr<Worker>> worker = MakeLocalWorker(config, SharedAssets());
  FEDLORA_CHECK_MSG(worker.ok(), worker.status().ToString());
  return std::move(worker).value();
}

wire::RoundTask WorkerTask(std::uint64_t round, std::uint32_t steps = 4) {
  wire::RoundTask task;
  task.round = round;
  task.lora.rank = 4;
  task.lora.alpha = 8;
  task.lora.targets = {"q_proj", "v_proj", "down_proj"};
  task.train.learning_rate = 5e-3;
  task.train.local_steps = steps;
  task.train.batch_size = 4;
  task.train.seq_len = 64;
  task.train.seed = 99;
  task.train.upload_dtype = DType::kBF16;
  return task;
}

wire::EvalTask EvalTaskFor(const wire::RoundTask& train, TensorMap tensors) {
  wire::EvalTask task;
  task.round = train.round;
  task.lora = train.lora;
  task.train = train.train;
  task.max_batches = 4;
  task.tensors = std::move(tensors);
  return task;
}

TEST(LocalWorkerTest, DescribeIntroducesTheClientItsModelAndItsData) {
  auto worker = MakeWorkerOrDie(WorkerConfig("alice"));
  const wire::Hello hello = worker->Describe();
  EXPECT_EQ(hello.client_name, "alice");
  EXPECT_EQ(hello.software_version, "fedlora 0.1.0");
  EXPECT_EQ(hello.base_model_sha256, BaseModelDigest(*SharedAssets()));
  EXPECT_EQ(hello.base_model_sha256, Stories260K().Digest());
  EXPECT_EQ(hello.modules, AdaptableModules(*SharedAssets()));
  EXPECT_EQ(hello.modules.size(), 35u);
  EXPECT_EQ(hello.capabilities.device, "cpu");
  EXPECT_GT(hello.capabilities.memory_bytes, 0u);
  EXPECT_EQ(hello.capabilities.max_rank, 16u);
  EXPECT_GT(hello.capabilities.num_examples, 50u);
  EXPECT_DOUBLE_EQ(hello.capabilities.relative_speed, 1.0);
}

TEST(LocalWorkerTest, DescribeCountsTrainingWindowsOf128Tokens) {
  ClientConfig config = WorkerConfig("bob");
  auto worker = MakeWorkerOrDie(config);
  const Result<ClientData> data = LoadClientData(config.data, Tok512());
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(worker->Describe().capabilities.num_examples, data->train.size() / 128);
}

TEST(LocalWorkerTest, TrainReturnsAnUpdateWithMetricsAndFactorsInTheUploadDtype) {
  auto worker = MakeWorkerOrDie(WorkerConfig("carol"));
  const wire::RoundTask task = WorkerTask(3);
  const Result<wire::Update> update = worker->Train(task, {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->round, 3u);
  EXPECT_EQ(update->num_samples, 16u);  // 4 steps x batch 4.
  const Result<ClientData> data = LoadClientData(WorkerConfig("carol").data, Tok512());
  EXPECT_EQ(update->num_examples, data->train.size() / 64);
  for (const char* key : {"train_loss", "steps", "tokens", "seconds"}) {
    EXPECT_TRUE(update->metrics.contains(key)) << key;
  }
  EXPECT_DOUBLE_EQ(update->metrics.at("steps"), 4.0);
  EXPECT_DOUBLE_EQ(update->metrics.at("tokens"), 16.0 * 64);
  ASSERT_EQ(update->tensors.size(), 2u * 3 * 5);
  const Tensor& b = update->tensors.at("model.layers.4.mlp.down_proj.lora_B.weight");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{64, 4}));
}

// The data owner's ops endpoint reads the training step from the board the worker posts to.
TEST(LocalWorkerTest, EveryTrainingStepIsPostedToTheProgressBoard) {
  TrainingProgressBoard board;
  Result<std::unique_ptr<Worker>> worker =
      MakeLocalWorker(WorkerConfig("erin"), SharedAssets(), {.progress_board = &board});
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  EXPECT_FALSE(board.Latest().has_value());
  ASSERT_TRUE((*worker)->Train(WorkerTask(5, /*steps=*/6), {}).ok());
  const std::optional<TrainingProgressBoard::Entry> latest = board.Latest();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->round, 5u);
  EXPECT_EQ(latest->step.step, 6u);
  EXPECT_EQ(latest->step.total_steps, 6u);
  EXPECT_GT(latest->step.tokens, 0u);
  EXPECT_GT(latest->step.loss, 0.0);
}

TEST(LocalWorkerTest, TrainingFromTheReturnedAdapterLowersTheHeldoutLoss) {
  auto worker = MakeWorkerOrDie(WorkerConfig("dave"));
  wire::RoundTask task = WorkerTask(1, 30);
  task.train.upload_dtype = DType::kF32;
  const Result<wire::Update> update = worker->Train(task, {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  const Result<wire::EvalResult> base = worker->Evaluate(EvalTaskFor(task, {}), {});
  const Result<wire::EvalResult> tuned = worker->Evaluate(EvalTaskFor(task, update->tensors), {});
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  ASSERT_TRUE(tuned.ok()) << tuned.status().ToString();
  EXPECT_EQ(tuned->num_examples, 16u);  // max_batches 4 x batch 4.
  EXPECT_EQ(tuned->num_tokens, 16u * 64);
  EXPECT_NEAR(tuned->metrics.at("perplexity"), std::exp(tuned->loss), 1e-9);
  EXPECT_LT(tuned->loss, base->loss - 0.5);
}

TEST(LocalWorkerTest, TheSameTaskGivesTheSameUpdateAndAnotherClientNameAnother) {
  wire::RoundTask task = WorkerTask(2, 3);
  task.train.upload_dtype = DType::kF32;
  const auto first = MakeWorkerOrDie(WorkerConfig("erin"))->Train(task, {});
  const auto again = MakeWorkerOrDie(WorkerConfig("erin"))->Train(task, {});
  const auto other = MakeWorkerOrDie(WorkerConfig("frank"))->Train(task, {});
  ASSERT_TRUE(first.ok() && again.ok() && other.ok());
  EXPECT_EQ(first->tensors, again->tensors);
  EXPECT_NE(first->tensors, other->tensors);
}

TEST(LocalWorkerTest, TrainStartsFromTheTaskTensors) {
  auto worker = MakeWorkerOrDie(WorkerConfig("gina"));
  wire::RoundTask task = WorkerTask(1, 2);
  task.train.upload_dtype = DType::kF32;
  const Result<wire::Update> first = worker->Train(task, {});
  ASSERT_TRUE(first.ok());
  task.round = 2;
  task.train.learning_rate = 0.0;  // No movement: the upload must equal what was sent.
  task.tensors = first->tensors;
  const Result<wire::Update> second = worker->Train(task, {});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->tensors, first->tensors);
}

TEST(LocalWorkerTest, TrainRejectsAnInconsistentTask) {
  auto worker = MakeWorkerOrDie(WorkerConfig("hank"));
  wire::RoundTask task = WorkerTask(1, 1);
  task.lora.targets = {"attn_proj"};
  EXPECT_EQ(worker->Train(task, {}).status().code(), StatusCode::kInvalidArgument);
  task = WorkerTask(1, 1);
  task.lora.rank = 32;  // Above max_rank 16.
  EXPECT_THAT(worker->Train(task, {}).status().message(), HasSubstr("max_rank"));
  task = WorkerTask(1, 1);
  task.tensors["model.layers.0.self_attn.q_proj.lora_A.weight"] = Zeros(DType::kF32, {4, 64});
  EXPECT_THAT(worker->Train(task, {}).status().message(), HasSubstr("missing adapter tensor"));
}

TEST(LocalWorkerTest, TrainHonoursAStopRequest) {
  auto worker = MakeWorkerOrDie(WorkerConfig("ivy"));
  std::stop_source stop;
  stop.request_stop();
  EXPECT_EQ(worker->Train(WorkerTask(1), stop.get_token()).status().code(),
            StatusCode::kCancelled);
}

TEST(LocalWorkerTest, EvaluateRespectsTheConfiguredWindowCap) {
  ClientConfig config = WorkerConfig("judy");
  config.data.max_eval_windows = 3;
  auto worker = MakeWorkerOrDie(config);
  const Result<wire::EvalResult> result = worker->Evaluate(EvalTaskFor(WorkerTask(1), {}), {});
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->num_examples, 3u);
}

TEST(LocalWorkerTest, WorkersSharingAComputeLockBothTrainAndReleaseIt) {
  std::mutex lock;
  std::vector<std::unique_ptr<Worker>> workers;
  for (const char* name : {"kim", "lou"}) {
    Result<std::unique_ptr<Worker>> w =
        MakeLocalWorker(WorkerConfig(name), SharedAssets(), {.compute_lock = &lock});
    ASSERT_TRUE(w.ok());
    workers.push_back(std::move(w).value());
  }
  std::vector<Status> results(2);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] { results[i] = workers[i]->Train(WorkerTask(1, 2), {}).status(); });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(results[0].ok()) << results[0].ToString();
  EXPECT_TRUE(results[1].ok()) << results[1].ToString();
  ASSERT_TRUE(lock.try_lock());  // Neither worker kept the lock.
  lock.unlock();
}

// Trains `task` on each worker from a thread of its own; returns the results in worker order.
std::vector<Result<wire::Update>> TrainConcurrently(std::vector<std::unique_ptr<Worker>>& workers,
                                                    const wire::RoundTask& task,
                                                    std::stop_token stop = {}) {
  std::vector<Result<wire::Update>> results(workers.size(), Status(StatusCode::kInternal, "unset"));
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = workers[i]->Train(task, stop); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(LocalWorkerTest, WorkersSharingABatcherTrainInGroupsAndUploadWhatTheyWouldAlone) {
  constexpr std::size_t kWorkers = 4;
  std::mutex lock;
  const std::shared_ptr<TrainingBatcher> batcher =
      MakeTrainingBatcher(SharedAssets(), &lock, {.max_clients = kWorkers});
  std::vector<std::unique_ptr<Worker>> grouped, alone;
  for (std::size_t i = 0; i < kWorkers; ++i) {
    const ClientConfig config = WorkerConfig("batch-" + std::to_string(i),
                                             static_cast<std::uint32_t>(i));
    Result<std::unique_ptr<Worker>> w =
        MakeLocalWorker(config, SharedAssets(), {.compute_lock = &lock, .batcher = batcher});
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    grouped.push_back(std::move(w).value());
    alone.push_back(MakeWorkerOrDie(config));
  }
  wire::RoundTask task = WorkerTask(1, 3);
  task.train.upload_dtype = DType::kF32;
  task.train.eps = 1e-3;  // Rounding-level gradients do not flip AdamW's steps (batched_trainer_test).
  const std::vector<Result<wire::Update>> batched = TrainConcurrently(grouped, task);
  for (std::size_t i = 0; i < kWorkers; ++i) {
    SCOPED_TRACE("worker " + std::to_string(i));
    ASSERT_TRUE(batched[i].ok()) << batched[i].status().ToString();
    const Result<wire::Update> single = alone[i]->Train(task, {});
    ASSERT_TRUE(single.ok()) << single.status().ToString();
    // batched_trainer_test holds TrainLoraBatched to 1e-5; through workers, batcher and the
    // upload's conversion, LibTorch 2.11 with MKL on 16 threads left 1.1e-5 (this build: 0).
    EXPECT_LE(testing::WorstRelativeDifference(single->tensors, batched[i]->tensors), 5e-5);
    EXPECT_NEAR(batched[i]->metrics.at("train_loss"), single->metrics.at("train_loss"), 1e-5);
    EXPECT_EQ(batched[i]->num_samples, single->num_samples);
    EXPECT_GT(batched[i]->metrics.at("trainable_params"), 0);
    EXPECT_GT(batched[i]->metrics.at("state_bytes"), 0);
  }
  const BatcherStats stats = GetBatcherStats(*batcher);
  EXPECT_EQ(stats.clients, kWorkers);
  EXPECT_GE(stats.groups, 1u);
  EXPECT_LE(stats.largest_group, kWorkers);
  ASSERT_TRUE(lock.try_lock());  // Nobody kept the compute lock.
  lock.unlock();
}

TEST(LocalWorkerTest, ABatchedWorkerAskedToStopReturnsCancelled) {
  std::mutex lock;
  const std::shared_ptr<TrainingBatcher> batcher =
      MakeTrainingBatcher(SharedAssets(), &lock, {.max_clients = 2});
  Result<std::unique_ptr<Worker>> w = MakeLocalWorker(
      WorkerConfig("batch-stop"), SharedAssets(), {.compute_lock = &lock, .batcher = batcher});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::stop_source stop;
  stop.request_stop();
  EXPECT_EQ((*w)->Train(WorkerTask(1), stop.get_token()).status().code(), StatusCode::kCancelled);
  // The batcher is still usable afterwards.
  EXPECT_TRUE((*w)->Train(WorkerTask(1, 1), {}).ok());
}

TEST(LocalWorkerTest, ActivationBytesPerRowGrowsWithTheSequenceLength) {
  const std::uint64_t short_rows = ActivationBytesPerRow(*SharedAssets(), 64);
  const std::uint64_t long_rows = ActivationBytesPerRow(*SharedAssets(), 256);
  EXPECT_GT(short_rows, 0u);
  EXPECT_GT(long_rows, 4 * short_rows);  // The [T, T] attention scores grow quadratically.
}

TEST(LocalWorkerTest, LoadModelAssetsNamesTheFileAtFault) {
  ModelConfig config;
  config.path = "/nonexistent/model.bin";
  config.tokenizer = TokenizerPath();
  EXPECT_THAT(LoadModelAssets(config).status().message(), HasSubstr("/nonexistent/model.bin"));
  config.path = LegacyModelPath();
  config.tokenizer = "/nonexistent/tok.bin";
  EXPECT_THAT(LoadModelAssets(config).status().message(), HasSubstr("/nonexistent/tok.bin"));
  config.format = "gguf";
  EXPECT_EQ(LoadModelAssets(config).status().code(), StatusCode::kInvalidArgument);
}

TEST(LocalWorkerTest, MakeLocalWorkerRejectsUnsupportedDevicesAndBadData) {
  ClientConfig config = WorkerConfig("leo");
  config.device = "cuda:0";  // This LibTorch has no CUDA; a CUDA build has the model on the CPU.
  const Status wrong_device = MakeLocalWorker(config, SharedAssets()).status();
  EXPECT_EQ(wrong_device.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong_device.message(), HasSubstr("cuda"));
  config = WorkerConfig("leo");
  config.data.path = "/nonexistent/corpus.txt";
  const Status s = MakeLocalWorker(config, SharedAssets()).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/corpus.txt"));
  EXPECT_THAT(s.message(), HasSubstr("leo"));
}

// ---- A data owner who trains with DP-SGD (privacy.dp_sgd) --------------------------------------

ClientConfig DpSgdConfigFor(const std::string& name, double target_epsilon) {
  ClientConfig config = WorkerConfig(name);
  config.state_dir =
      ::testing::TempDir() + "fedlora_dpsgd_worker_" + std::to_string(::getpid()) + "_" + name;
  config.privacy.dp_sgd = {.enabled = true,
                           .clip = 0.5,
                           .noise_multiplier = 1.0,
                           .target_epsilon = target_epsilon,
                           .delta = 1e-5};
  return config;
}

TEST(LocalWorkerTest,
     ADpSgdClientReportsItsEpsilonAndRefusesOnceItsBudgetIsSpentEvenAfterARestart) {
  ClientConfig config = DpSgdConfigFor("dp-ann", 3.0);
  std::filesystem::remove_all(config.state_dir);
  const wire::RoundTask task = WorkerTask(1, 20);
  double spent = 0;
  {
    auto worker = MakeWorkerOrDie(config);
    const Result<wire::Update> update = worker->Train(task, {});
    ASSERT_TRUE(update.ok()) << update.status().ToString();
    spent = update->metrics.at(std::string(wire::kDpSgdEpsilonMetric));
    EXPECT_GT(spent, 0.0);
    EXPECT_LT(spent, 3.0);
    EXPECT_DOUBLE_EQ(update->metrics.at("dp_sgd_steps"), 20.0);
    // The expected count (steps x batch_size here), not the realised Poisson count: the
    // coordinator refuses more than the task allows, and the realised count is about the data.
    EXPECT_EQ(update->num_samples, 20u * 4);
    EXPECT_TRUE(std::filesystem::exists(config.state_dir + "/dp_sgd_budget.json"));
  }
  // A budget just above one round: the restarted client refuses the next round before training.
  config.privacy.dp_sgd.target_epsilon = spent * 1.001;
  auto restarted = MakeWorkerOrDie(config);
  const Result<wire::Update> refused = restarted->Train(WorkerTask(2, 20), {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().detail(),
            static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("DP-SGD budget"));
}

TEST(LocalWorkerTest, ADpSgdClientNeverComputesALoraSbInitialisationFromItsTrainingData) {
  ClientConfig config = DpSgdConfigFor("dp-bea", 8.0);
  config.data.init_from_train = true;
  auto worker = MakeWorkerOrDie(config);
  EXPECT_FALSE(worker->Describe().capabilities.can_initialize);
  wire::RoundTask task = WorkerTask(0, 1);
  task.plan.mode = wire::AdapterMode::kLoraSbInit;
  task.plan.train_a = task.plan.train_b = task.plan.upload_a = task.plan.upload_b = false;
  task.plan.init_samples = 4;
  task.plan.init_learning_rate = 1e-3;
  const Result<wire::Update> refused = worker->Train(task, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().detail(),
            static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("data.init_path"));
  // Public data named by the owner may serve.
  config.data.init_from_train = false;
  config.data.init_path = ShakespearePath();
  EXPECT_TRUE(MakeWorkerOrDie(config)->Describe().capabilities.can_initialize);
}

TEST(LocalWorkerTest, ADamagedDpSgdBudgetStopsTheClientFromStartingAndNamesTheFile) {
  ClientConfig config = DpSgdConfigFor("dp-cid", 8.0);
  std::filesystem::create_directories(config.state_dir);
  const std::string path = config.state_dir + "/dp_sgd_budget.json";
  std::ofstream(path) << "not json";
  const Result<std::unique_ptr<Worker>> worker = MakeLocalWorker(config, SharedAssets());
  ASSERT_FALSE(worker.ok());
  EXPECT_EQ(worker.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(std::string(worker.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace fedlora::client
