// Every adapter mode of the protocol (common/wire/messages.h AdapterPlan) as the coordinator's
// strategies use it, through the real LocalWorker on stories260K, plus the adapter-level facts
// they rest on (scale rule, sketches, LoRA-SB, HetLoRA pruning, FedSA's private B).
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <numeric>

#include "client/data/text_dataset.h"
#include "client/local_worker.h"
#include "client/lora/lora_adapter.h"
#include "client/lora/task_adapter.h"
#include "client/torch_bridge.h"
#include "client/train/trainer.h"
#include "common/fs.h"
#include "common/lora/adapter_layout.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client::modes_test {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.
using wire::AdapterInit;
using wire::AdapterMode;

std::shared_ptr<const ModelAssets> Assets() {
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

// Private to this process: ctest runs tests in parallel processes, some with the same names.
std::string FreshDir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "fedlora_modes_" + std::to_string(::getpid()) + "_" + name;
  FEDLORA_CHECK(fs::RemoveAll(dir).ok());
  return dir;
}

ClientConfig Config(const std::string& name, std::uint32_t partition = 1) {
  ClientConfig config;
  config.device = "cpu";  // Where the shared test model lives.
  config.name = name;
  config.data.path = ShakespearePath();
  config.data.partition = "speaker";
  config.data.num_partitions = 8;
  config.data.partition_index = partition;
  config.data.heldout_fraction = 0.1;
  config.capabilities.max_rank = 16;
  config.state_dir = FreshDir(name);
  return config;
}

std::unique_ptr<Worker> NewWorker(const ClientConfig& config) {
  Result<std::unique_ptr<Worker>> worker = MakeLocalWorker(config, Assets());
  FEDLORA_CHECK_MSG(worker.ok(), worker.status().ToString());
  return std::move(worker).value();
}

wire::LoraSpec Lora(std::uint32_t rank = 4, double alpha = 8) {
  wire::LoraSpec lora;
  lora.rank = rank;
  lora.alpha = alpha;
  lora.targets = {"q_proj", "v_proj", "down_proj"};
  return lora;
}

wire::TrainSpec Training(std::uint32_t steps, double lr = 1e-2) {
  wire::TrainSpec train;
  train.learning_rate = lr;
  train.local_steps = steps;
  train.batch_size = 4;
  train.seq_len = 64;
  train.seed = 99;
  train.upload_dtype = DType::kF32;
  return train;
}

std::vector<wire::ModuleInfo> Targets(const wire::LoraSpec& lora) {
  Result<std::vector<wire::ModuleInfo>> t =
      lora::SelectTargets(AdaptableModules(*Assets()), lora);
  FEDLORA_CHECK_MSG(t.ok(), t.status().ToString());
  return std::move(t).value();
}

wire::ModuleInfo Module(const std::string& name) {
  for (const wire::ModuleInfo& m : AdaptableModules(*Assets())) {
    if (m.name == name) return m;
  }
  FEDLORA_CHECK_MSG(false, "no module ", name);
  return {};
}

at::Tensor Random(std::vector<std::int64_t> shape, std::uint64_t seed, double scale) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat) * scale;
}

// A global adapter of `rank` on `modules`: PEFT A, and B random (`b_scale` > 0) or zero.
TensorMap GlobalAdapter(std::span<const wire::ModuleInfo> modules, std::uint32_t rank,
                        std::uint64_t seed, double b_scale = 0.0) {
  TensorMap t = lora::InitAdapter(modules, rank, seed);
  if (b_scale > 0) {
    std::uint64_t s = seed;
    for (const wire::ModuleInfo& m : modules) {
      t[lora::LoraBName(m.name)] = *ToWire(Random({m.d_out, rank}, ++s, b_scale));
    }
  }
  return t;
}

at::Tensor Float(const Tensor& t) { return *FromWireAsFloat(t); }
at::Tensor Float(const TensorMap& m, const std::string& name) { return Float(m.at(name)); }

using Shapes = std::map<std::string, std::vector<std::int64_t>>;

void ExpectUpload(const TensorMap& upload, const Shapes& expected, DType dtype) {
  std::vector<std::string> got, want;
  for (const auto& [name, t] : upload) got.push_back(name);
  for (const auto& [name, shape] : expected) want.push_back(name);
  EXPECT_EQ(got, want);
  for (const auto& [name, shape] : expected) {
    if (!upload.contains(name)) continue;
    EXPECT_EQ(upload.at(name).shape, shape) << name;
    EXPECT_EQ(upload.at(name).dtype, dtype) << name;
  }
}

wire::RoundTask Task(std::uint64_t round, wire::LoraSpec lora, wire::TrainSpec train,
                     wire::AdapterPlan plan, TensorMap tensors) {
  wire::RoundTask task;
  task.round = round;
  task.lora = std::move(lora);
  task.train = std::move(train);
  task.plan = std::move(plan);
  task.tensors = std::move(tensors);
  return task;
}

Result<double> HeldoutLoss(Worker& worker, const wire::LoraSpec& lora,
                           const wire::AdapterPlan& plan, TensorMap tensors) {
  wire::EvalTask task;
  task.round = 1;
  task.lora = lora;
  task.train = Training(1);
  task.max_batches = 4;
  task.plan = plan;
  task.tensors = std::move(tensors);
  FEDLORA_ASSIGN_OR_RETURN(const wire::EvalResult result, worker.Evaluate(task, {}));
  return result.loss;
}

// The merged weight of `module` in double: W + scale·B·A.
at::Tensor Merged(const std::string& module, const at::Tensor& b, const at::Tensor& a,
                  double scale) {
  const at::Tensor w = Stories260K().Weight(module + ".weight").to(at::kDouble);
  return w + at::matmul(b.to(at::kDouble), a.to(at::kDouble)) * scale;
}

double MaxAbsDiff(const at::Tensor& x, const at::Tensor& y) {
  return (x.to(at::kDouble) - y.to(at::kDouble)).abs().max().item<double>();
}

// ---- Standard adapters: heterogeneous ranks, fresh init, frozen A ----------------------------

TEST(AdapterModesTest, PerModuleRanksTrainAndUploadOnlyThePlannedModulesAtTheirRanks) {
  const wire::LoraSpec lora = Lora(4);
  const std::string q0 = "model.layers.0.self_attn.q_proj", v4 = "model.layers.4.self_attn.v_proj";
  const std::string d2 = "model.layers.2.mlp.down_proj";
  wire::AdapterPlan plan;  // LEGEND/HetLoRA-style: ranks differ, rank 0 and unlisted = no LoRA.
  plan.modules = {{q0, 2, {}}, {v4, 4, {}}, {d2, 0, {}}};
  TensorMap tensors;
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 5);
  tensors[lora::LoraAName(q0)] = *ToWire(Float(global, lora::LoraAName(q0)).narrow(0, 0, 2));
  tensors[lora::LoraBName(q0)] = *ToWire(Float(global, lora::LoraBName(q0)).narrow(1, 0, 2));
  tensors[lora::LoraAName(v4)] = global.at(lora::LoraAName(v4));
  tensors[lora::LoraBName(v4)] = global.at(lora::LoraBName(v4));
  auto worker = NewWorker(Config("ranks"));
  const Result<wire::Update> update = worker->Train(Task(1, lora, Training(16), plan, tensors), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  ExpectUpload(update->tensors,
               {{lora::LoraAName(q0), {2, Module(q0).d_in}},
                {lora::LoraBName(q0), {Module(q0).d_out, 2}},
                {lora::LoraAName(v4), {4, Module(v4).d_in}},
                {lora::LoraBName(v4), {Module(v4).d_out, 4}}},
               DType::kF32);
  const Result<double> before = HeldoutLoss(*worker, lora, plan, tensors);
  const Result<double> after = HeldoutLoss(*worker, lora, plan, update->tensors);
  ASSERT_TRUE(before.ok() && after.ok()) << after.status().ToString();
  EXPECT_LT(*after, *before - 0.02);
}

TEST(AdapterModesTest, FreshInitDrawsEachClientsOwnAdapterEveryRoundAndTrainsIt) {
  const wire::LoraSpec lora = Lora(4);
  wire::AdapterPlan plan;  // FLoRA: a fresh adapter per client and round, at the client's rank.
  plan.init = AdapterInit::kFresh;
  for (const wire::ModuleInfo& m : Targets(lora)) plan.modules.push_back({m.name, 3, {}});
  const wire::RoundTask task = Task(2, lora, Training(16), plan, {});
  auto alice = NewWorker(Config("fresh-a"));
  const Result<wire::Update> first = alice->Train(task, {});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) {
    expected[lora::LoraAName(m.name)] = {3, m.d_in};
    expected[lora::LoraBName(m.name)] = {m.d_out, 3};
  }
  ExpectUpload(first->tensors, expected, DType::kF32);
  EXPECT_EQ(NewWorker(Config("fresh-a"))->Train(task, {})->tensors, first->tensors);
  EXPECT_NE(NewWorker(Config("fresh-b"))->Train(task, {})->tensors, first->tensors);
  wire::RoundTask next = task;
  next.round = 3;
  EXPECT_NE(alice->Train(next, {})->tensors, first->tensors);

  wire::AdapterPlan eval_plan = plan;
  eval_plan.init = AdapterInit::kFromTask;
  const Result<double> base = HeldoutLoss(*alice, lora, {}, {});
  const Result<double> tuned = HeldoutLoss(*alice, lora, eval_plan, first->tensors);
  ASSERT_TRUE(base.ok() && tuned.ok()) << tuned.status().ToString();
  EXPECT_LT(*tuned, *base - 0.02);
}

TEST(AdapterModesTest, FrozenATrainsOnlyBAndUploadsOnlyB) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 11);
  wire::AdapterPlan plan;  // FFA-LoRA.
  plan.train_a = false;
  plan.upload_a = false;
  auto worker = NewWorker(Config("ffa"));
  const Result<wire::Update> update = worker->Train(Task(1, lora, Training(16), plan, global), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) expected[lora::LoraBName(m.name)] = {m.d_out, 4};
  ExpectUpload(update->tensors, expected, DType::kF32);

  plan.upload_a = true;  // Same task, A uploaded too: it must come back exactly as sent.
  const Result<wire::Update> with_a = worker->Train(Task(1, lora, Training(4), plan, global), {});
  ASSERT_TRUE(with_a.ok());
  for (const wire::ModuleInfo& m : Targets(lora)) {
    EXPECT_EQ(with_a->tensors.at(lora::LoraAName(m.name)), global.at(lora::LoraAName(m.name)));
  }
  TensorMap tuned = global;
  for (const auto& [name, t] : update->tensors) tuned[name] = t;
  const Result<double> base = HeldoutLoss(*worker, lora, {}, global);
  const Result<double> after = HeldoutLoss(*worker, lora, {}, tuned);
  ASSERT_TRUE(base.ok() && after.ok());
  EXPECT_LT(*after, *base - 0.02);
}

// ---- Scale rule ------------------------------------------------------------------------------

TEST(AdapterModesTest, ARankLimitedTruncationContributesExactlyThePrefixOfTheGlobalAdapter) {
  const wire::LoraSpec lora = Lora(8, 16);  // Nominal s = 16 / 8 = 2, whatever the planned rank.
  const std::vector<wire::ModuleInfo> targets = Targets(lora);
  const TensorMap global = GlobalAdapter(targets, 8, 21, 0.05);
  wire::AdapterPlan plan;
  TensorMap truncated;
  for (const wire::ModuleInfo& m : targets) {
    plan.modules.push_back({m.name, 3, {}});
    truncated[lora::LoraAName(m.name)] =
        *ToWire(Float(global, lora::LoraAName(m.name)).narrow(0, 0, 3));
    truncated[lora::LoraBName(m.name)] =
        *ToWire(Float(global, lora::LoraBName(m.name)).narrow(1, 0, 3));
  }
  const Result<ResolvedPlan> resolved =
      ResolvePlan(Stories260K(), lora, plan, TaskPurpose::kTrain);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  const Result<std::unique_ptr<LoraAdapter>> client =
      BuildTaskAdapter(Stories260K(), lora, *resolved, {.tensors = &truncated});
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  const Result<std::unique_ptr<LoraAdapter>> full = LoraAdapter::Create(Stories260K(), lora, 0);
  ASSERT_TRUE(full.ok() && (*full)->Load(global).ok());
  for (const wire::ModuleInfo& m : targets) {
    EXPECT_DOUBLE_EQ((*client)->ModuleScale(m.name), 2.0) << m.name;
    const at::Tensor a = Float(global, lora::LoraAName(m.name));
    const at::Tensor b = Float(global, lora::LoraBName(m.name));
    const at::Tensor w = Stories260K().Weight(m.name + ".weight").to(at::kDouble);
    // The client's contribution is the first 3 rank-one terms of the global s·B·A ...
    const at::Tensor prefix = Merged(m.name, b.narrow(1, 0, 3), a.narrow(0, 0, 3), 2.0);
    EXPECT_LT(MaxAbsDiff((*client)->MergedWeight(Stories260K(), m.name), prefix), 1e-6) << m.name;
    // ... and the global one is that prefix plus the remaining 5 terms, at the same scale.
    const at::Tensor tail = at::matmul(b.narrow(1, 3, 5).to(at::kDouble),
                                       a.narrow(0, 3, 5).to(at::kDouble)) * 2.0;
    EXPECT_LT(MaxAbsDiff((*full)->MergedWeight(Stories260K(), m.name) - w, prefix - w + tail),
              1e-6)
        << m.name;
  }
}

// ---- Sketched (FSLoRA) ---------------------------------------------------------------------

TEST(AdapterModesTest, SketchedTaskTrainsTheSubBlocksAndUploadsThemUnderTheSameNames) {
  const wire::LoraSpec lora = Lora(8, 16);
  const std::vector<wire::ModuleInfo> targets = Targets(lora);
  const TensorMap global = GlobalAdapter(targets, 8, 31);
  wire::AdapterPlan plan;
  plan.mode = AdapterMode::kSketched;
  plan.global_rank = 8;
  TensorMap tensors;
  Shapes expected;
  std::uint32_t shift = 0;
  for (const wire::ModuleInfo& m : targets) {
    const std::vector<std::int64_t> sketch = {shift % 3, 3 + shift % 2, 7};
    ++shift;
    const at::Tensor idx = at::tensor(sketch, at::kLong);
    tensors[lora::LoraAName(m.name)] =
        *ToWire(Float(global, lora::LoraAName(m.name)).index_select(0, idx));
    tensors[lora::LoraBName(m.name)] =
        *ToWire(Float(global, lora::LoraBName(m.name)).index_select(1, idx));
    plan.modules.push_back({m.name, 3, {sketch.begin(), sketch.end()}});
    expected[lora::LoraAName(m.name)] = {3, m.d_in};
    expected[lora::LoraBName(m.name)] = {m.d_out, 3};
  }
  wire::TrainSpec train = Training(16);
  train.upload_dtype = DType::kBF16;
  auto worker = NewWorker(Config("sketch"));
  const Result<wire::Update> update = worker->Train(Task(1, lora, train, plan, tensors), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  ExpectUpload(update->tensors, expected, DType::kBF16);
  const Result<double> before = HeldoutLoss(*worker, lora, plan, tensors);
  const Result<double> after = HeldoutLoss(*worker, lora, plan, update->tensors);
  ASSERT_TRUE(before.ok() && after.ok()) << after.status().ToString();
  EXPECT_LT(*after, *before - 0.02);
}

TEST(AdapterModesTest, SketchedTrainingWithTheIdentitySketchEqualsStandardTraining) {
  const wire::LoraSpec lora = Lora(4, 8);
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 41, 0.02);
  wire::AdapterPlan sketched;
  sketched.mode = AdapterMode::kSketched;
  sketched.global_rank = 4;
  for (const wire::ModuleInfo& m : Targets(lora)) sketched.modules.push_back({m.name, 4, {0, 1, 2, 3}});
  const Result<wire::Update> standard =
      NewWorker(Config("ident"))->Train(Task(1, lora, Training(6), {}, global), {});
  const Result<wire::Update> sketch =
      NewWorker(Config("ident"))->Train(Task(1, lora, Training(6), sketched, global), {});
  ASSERT_TRUE(standard.ok() && sketch.ok()) << sketch.status().ToString();
  EXPECT_EQ(sketch->tensors, standard->tensors);  // Bit-identical: same scale, same seeds.
}

TEST(AdapterModesTest, ASketchedSubAdapterMergesAtScaleTimesGlobalRankOverK) {
  const wire::LoraSpec lora = Lora(8, 16);
  const std::vector<wire::ModuleInfo> targets = Targets(lora);
  const TensorMap global = GlobalAdapter(targets, 8, 51, 0.05);
  const std::vector<std::int64_t> sketch = {1, 4, 6};
  const at::Tensor idx = at::tensor(sketch, at::kLong);
  wire::AdapterPlan plan;
  plan.mode = AdapterMode::kSketched;
  plan.global_rank = 8;
  TensorMap tensors;
  for (const wire::ModuleInfo& m : targets) {
    plan.modules.push_back({m.name, 3, {1, 4, 6}});
    tensors[lora::LoraAName(m.name)] =
        *ToWire(Float(global, lora::LoraAName(m.name)).index_select(0, idx));
    tensors[lora::LoraBName(m.name)] =
        *ToWire(Float(global, lora::LoraBName(m.name)).index_select(1, idx));
  }
  const Result<ResolvedPlan> resolved =
      ResolvePlan(Stories260K(), lora, plan, TaskPurpose::kTrain);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  const Result<std::unique_ptr<LoraAdapter>> adapter =
      BuildTaskAdapter(Stories260K(), lora, *resolved, {.tensors = &tensors});
  ASSERT_TRUE(adapter.ok()) << adapter.status().ToString();
  // W + s·(r/k)·B[:, I]·A[I, :] = W + s·B·S·A with the unbiased sketch S = (r/k)·diag(1_I).
  const double s = 16.0 / 8.0, ratio = 8.0 / 3.0;
  for (const wire::ModuleInfo& m : targets) {
    const at::Tensor a = Float(global, lora::LoraAName(m.name));
    const at::Tensor b = Float(global, lora::LoraBName(m.name));
    at::Tensor diag = at::zeros({8}, at::kDouble);
    for (std::int64_t i : sketch) diag[i] = ratio;
    const at::Tensor expected = Stories260K().Weight(m.name + ".weight").to(at::kDouble) +
                                at::matmul(b.to(at::kDouble) * diag, a.to(at::kDouble)) * s;
    EXPECT_DOUBLE_EQ((*adapter)->ModuleScale(m.name), s * ratio);
    EXPECT_LT(MaxAbsDiff((*adapter)->MergedWeight(Stories260K(), m.name), expected), 1e-6);
  }
}

// ---- LoRA-SB (Fed-SB) ----------------------------------------------------------------------

std::unique_ptr<LoraAdapter> RandomLatentAdapter(const wire::LoraSpec& lora, std::uint64_t seed) {
  std::vector<LoraModuleSpec> specs;
  for (const wire::ModuleInfo& m : Targets(lora)) specs.push_back({m.name, lora.rank, 0.75});
  Result<std::unique_ptr<LoraAdapter>> adapter =
      LoraAdapter::Create(Stories260K(), specs, {.latent = true}, seed);
  FEDLORA_CHECK_MSG(adapter.ok(), adapter.status().ToString());
  for (const wire::ModuleInfo& m : Targets(lora)) {
    const auto r = static_cast<std::int64_t>(lora.rank);
    FEDLORA_CHECK((*adapter)->SetFactor(m.name, LoraFactor::kB, Random({m.d_out, r}, ++seed, 0.1)).ok());
    FEDLORA_CHECK((*adapter)->SetFactor(m.name, LoraFactor::kA, Random({r, m.d_in}, ++seed, 0.1)).ok());
    FEDLORA_CHECK((*adapter)->SetFactor(m.name, LoraFactor::kR, Random({r, r}, ++seed, 0.5)).ok());
  }
  return std::move(adapter).value();
}

TEST(AdapterModesTest, LoraSbForwardEqualsTheForwardWithMergedWeights) {
  const wire::LoraSpec lora = Lora(4);
  std::unique_ptr<LoraAdapter> adapter = RandomLatentAdapter(lora, 61);
  const LlamaModel& model = Stories260K();
  std::vector<at::Tensor> merged(model.AdaptableModules().size());
  for (const wire::ModuleInfo& m : Targets(lora)) {
    const at::Tensor w = adapter->MergedWeight(model, m.name);
    const at::Tensor expected =
        Merged(m.name, at::matmul(adapter->Factor(m.name, LoraFactor::kB).to(at::kDouble),
                                  adapter->Factor(m.name, LoraFactor::kR).to(at::kDouble)),
               adapter->Factor(m.name, LoraFactor::kA), 0.75);
    EXPECT_LT(MaxAbsDiff(w, expected), 1e-5) << m.name;
    merged[static_cast<std::size_t>(model.ModuleIndex(m.name))] = w.to(at::kFloat);
  }
  const at::Tensor tokens = RandomTokens(2, 24, 3);
  const at::Tensor with_adapter = ForwardOrDie(model, tokens, adapter.get());
  const Result<at::Tensor> with_merged = model.Forward(tokens, nullptr, merged);
  ASSERT_TRUE(with_merged.ok()) << with_merged.status().ToString();
  EXPECT_TRUE(at::allclose(with_adapter, *with_merged, 1e-4, 1e-4));
  EXPECT_FALSE(at::allclose(with_adapter, ForwardOrDie(model, tokens), 1e-3, 1e-3));
}

TEST(AdapterModesTest, LoraSbTrainingChangesOnlyR) {
  const wire::LoraSpec lora = Lora(4);
  std::unique_ptr<LoraAdapter> adapter = RandomLatentAdapter(lora, 71);
  EXPECT_EQ(adapter->Parameters().size(), Targets(lora).size());  // One R per module.
  const TensorMap before = *adapter->Export(DType::kF32);
  const Result<ClientData> data = LoadClientData(Config("sb-only-r").data, Tok512());
  ASSERT_TRUE(data.ok());
  ASSERT_TRUE(TrainLora(Stories260K(), *adapter, data->train, Training(3), 1).ok());
  const TensorMap after = *adapter->Export(DType::kF32);
  for (const wire::ModuleInfo& m : Targets(lora)) {
    EXPECT_EQ(after.at(lora::LoraAName(m.name)), before.at(lora::LoraAName(m.name)));
    EXPECT_EQ(after.at(lora::LoraBName(m.name)), before.at(lora::LoraBName(m.name)));
    const std::string r = LoraTensorName(m.name, LoraFactor::kR);
    EXPECT_NE(after.at(r), before.at(r));
  }
}

wire::AdapterPlan SbInitPlan(std::uint32_t samples) {
  wire::AdapterPlan plan;
  plan.mode = AdapterMode::kLoraSbInit;
  plan.train_a = plan.train_b = plan.upload_a = plan.upload_b = false;
  plan.init_samples = samples;
  plan.init_learning_rate = 1e-3;
  return plan;
}

TEST(AdapterModesTest, LoraSbInitUploadsOrthonormalFactorsWhoseProductIsTheTruncatedSignUpdate) {
  const wire::LoraSpec lora = Lora(4, 2);  // s = 0.5: R0 = Σ_r / s.
  ClientConfig config = Config("sb-init");
  config.data.init_from_train = true;
  auto worker = NewWorker(config);
  EXPECT_TRUE(worker->Describe().capabilities.can_initialize);
  wire::TrainSpec train = Training(1);
  train.batch_size = 2;
  train.seq_len = 32;
  const Result<wire::Update> update = worker->Train(Task(0, lora, train, SbInitPlan(6), {}), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->num_samples, 6u);
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) {
    expected[lora::LoraBName(m.name)] = {m.d_out, 4};
    expected[lora::LoraAName(m.name)] = {4, m.d_in};
    expected[LoraTensorName(m.name, LoraFactor::kR)] = {4, 4};
  }
  ExpectUpload(update->tensors, expected, DType::kF32);

  // The reference: the same gradient estimate (first 6 windows, batches of 2), a dense SVD.
  const Result<ClientData> data = LoadClientData(config.data, Tok512());
  ASSERT_TRUE(data.ok());
  std::vector<TokenWindow> windows = MakeWindows(data->train.size(), 32);
  windows.resize(6);
  const std::vector<wire::ModuleInfo> targets = Targets(lora);
  std::vector<std::size_t> indices;
  for (const wire::ModuleInfo& m : targets) {
    indices.push_back(static_cast<std::size_t>(Stories260K().ModuleIndex(m.name)));
  }
  const Result<BaseGradients> g =
      AccumulateBaseGradients(Stories260K(), indices, data->train, windows, 2);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  for (std::size_t i = 0; i < indices.size(); ++i) {
    const std::string& name = targets[i].name;
    const at::Tensor b = Float(update->tensors, lora::LoraBName(name)).to(at::kDouble);
    const at::Tensor a = Float(update->tensors, lora::LoraAName(name)).to(at::kDouble);
    const at::Tensor r = Float(update->tensors, LoraTensorName(name, LoraFactor::kR)).to(at::kDouble);
    const at::Tensor eye = at::eye(4, at::kDouble);
    EXPECT_LT(MaxAbsDiff(at::matmul(b.t(), b), eye), 1e-5) << name;  // Orthonormal columns.
    EXPECT_LT(MaxAbsDiff(at::matmul(a, a.t()), eye), 1e-5) << name;  // Orthonormal rows.
    const at::Tensor delta = at::sign(g->grads[i].to(at::kDouble)) * -1e-3;
    auto [u, sv, v] = at::svd(delta, /*some=*/true);  // Dense reference SVD.
    const at::Tensor best = at::matmul(u.narrow(1, 0, 4) * sv.narrow(0, 0, 4), v.narrow(1, 0, 4).t());
    const at::Tensor ours = at::matmul(at::matmul(b, r), a) * 0.5;
    EXPECT_LT(MaxAbsDiff(ours, best), 1e-3 * 1e-4) << name;  // |ΔW0| entries are 1e-3.
    EXPECT_GT(best.abs().max().item<double>(), 1e-5) << name;
  }
}

TEST(AdapterModesTest, LoraSbInitNeedsDeclaredInitialisationData) {
  auto none = NewWorker(Config("sb-none"));
  EXPECT_FALSE(none->Describe().capabilities.can_initialize);
  const Status s = none->Train(Task(0, Lora(4), Training(1), SbInitPlan(4), {}), {}).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("init_path"));

  ClientConfig config = Config("sb-path");
  config.data.init_path = WriteTempFile("sb_init.txt", "Once upon a time there was a cat.\n\n"
                                                       "The cat sat on the mat and was happy.\n");
  auto with_path = NewWorker(config);
  EXPECT_TRUE(with_path->Describe().capabilities.can_initialize);
  wire::TrainSpec train = Training(1);
  train.seq_len = 8;
  const Result<wire::Update> update = with_path->Train(Task(0, Lora(4), train, SbInitPlan(2), {}), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->tensors.size(), 3 * Targets(Lora(4)).size());
}

TEST(AdapterModesTest, LoraSbTaskTrainsOnlyRUploadsOnlyRAndCachesTheFrozenFactors) {
  const wire::LoraSpec lora = Lora(4, 4);
  ClientConfig config = Config("sb");
  config.data.init_from_train = true;
  auto worker = NewWorker(config);
  wire::TrainSpec init_train = Training(1);
  init_train.seq_len = 32;
  const Result<wire::Update> init =
      worker->Train(Task(0, lora, init_train, SbInitPlan(8), {}), {});
  ASSERT_TRUE(init.ok()) << init.status().ToString();

  wire::AdapterPlan plan;  // What FedSb::Configure sends.
  plan.mode = AdapterMode::kLoraSb;
  plan.train_a = plan.train_b = plan.upload_a = plan.upload_b = false;
  TensorMap r_only;
  for (const auto& [name, t] : init->tensors) {
    if (name.ends_with(".lora_R.weight")) r_only.emplace(name, t);
  }
  // First task of the session: R, B and A. The upload is R alone.
  const Result<wire::Update> first = worker->Train(Task(1, lora, Training(16), plan, init->tensors), {});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) expected[LoraTensorName(m.name, LoraFactor::kR)] = {4, 4};
  ExpectUpload(first->tensors, expected, DType::kF32);
  // Later tasks carry only R; the worker uses its cached B and A.
  const Result<wire::Update> second = worker->Train(Task(2, lora, Training(2), plan, first->tensors), {});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  ExpectUpload(second->tensors, expected, DType::kF32);
  const Result<double> before = HeldoutLoss(*worker, lora, plan, r_only);
  const Result<double> after = HeldoutLoss(*worker, lora, plan, first->tensors);
  ASSERT_TRUE(before.ok() && after.ok()) << after.status().ToString();
  EXPECT_LT(*after, *before - 0.02);
  // A worker that never received B and A cannot train.
  const Status s = NewWorker(Config("sb-cold"))->Train(Task(2, lora, Training(2), plan, r_only), {}).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("frozen"));
}

// ---- HetLoRA rank self-pruning ---------------------------------------------------------------

TEST(AdapterModesTest, HetLoraPruningTruncatesTheUploadWhenTheTailScoreFalls) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 81, 0.05);
  wire::AdapterPlan plan;
  plan.pruning = {.gamma = 0.5, .lambda = 10.0, .min_rank = 1};  // t = 2: a strong tail penalty.
  const Result<wire::Update> update =
      NewWorker(Config("het"))->Train(Task(1, lora, Training(8), plan, global), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_LT(update->metrics.at("tail_score_end"), update->metrics.at("tail_score_start"));
  EXPECT_EQ(update->metrics.at("pruned_modules"), static_cast<double>(Targets(lora).size()));
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) {
    expected[lora::LoraAName(m.name)] = {2, m.d_in};  // max(min_rank 1, ⌊0.5·4⌋) = 2.
    expected[lora::LoraBName(m.name)] = {m.d_out, 2};
  }
  ExpectUpload(update->tensors, expected, DType::kF32);
}

TEST(AdapterModesTest, HetLoraPruningKeepsTheFullRankWhenTheTailScoreDoesNotFall) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 82, 0.05);
  wire::AdapterPlan plan;
  plan.pruning = {.gamma = 0.5, .lambda = 0.0, .min_rank = 1};
  const Result<wire::Update> update =
      NewWorker(Config("het-keep"))->Train(Task(1, lora, Training(2, 0.0), plan, global), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->metrics.at("pruned_modules"), 0.0);
  EXPECT_EQ(update->tensors, global);  // lr 0: nothing moved, nothing pruned.
}

TEST(AdapterModesTest, TheTailPenaltyIsFiniteAndDifferentiableWhenBIsZero) {
  std::unique_ptr<LoraAdapter> adapter =
      std::move(LoraAdapter::Create(Stories260K(), Lora(4), 3)).value();  // B = 0.
  ASSERT_TRUE(adapter->SetTailPenalty(0.5, 1.0).ok());
  const at::Tensor penalty = adapter->Penalty();
  ASSERT_TRUE(penalty.defined());
  EXPECT_EQ(penalty.item<double>(), 0.0);
  penalty.backward();
  for (const at::Tensor& p : adapter->Parameters()) {
    EXPECT_TRUE(!p.grad().defined() || at::isfinite(p.grad()).all().item<bool>());
  }
}

// ---- FedSA-LoRA: the private B -------------------------------------------------------------

TensorMap OnlyA(const TensorMap& adapter) {
  TensorMap out;
  for (const auto& [name, t] : adapter) {
    if (name.ends_with(".lora_A.weight")) out.emplace(name, t);
  }
  return out;
}

TensorMap OnlyB(const TensorMap& adapter) {
  TensorMap out;
  for (const auto& [name, t] : adapter) {
    if (name.ends_with(".lora_B.weight")) out.emplace(name, t);
  }
  return out;
}

TEST(AdapterModesTest, FedSaTaskKeepsBPrivateUploadsOnlyAAndEvaluatesThePersonalModel) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap a_global = OnlyA(GlobalAdapter(Targets(lora), 4, 91));
  wire::AdapterPlan plan;  // What FedSaLora::Configure sends.
  plan.init = AdapterInit::kLocalB;
  plan.upload_b = false;
  auto worker = NewWorker(Config("fedsa"));
  const Result<double> before = HeldoutLoss(*worker, lora, plan, a_global);  // B = 0: the base.
  const Result<wire::Update> update = worker->Train(Task(1, lora, Training(16), plan, a_global), {});
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  Shapes expected;
  for (const wire::ModuleInfo& m : Targets(lora)) expected[lora::LoraAName(m.name)] = {4, m.d_in};
  ExpectUpload(update->tensors, expected, DType::kF32);
  const Result<double> after = HeldoutLoss(*worker, lora, plan, update->tensors);
  ASSERT_TRUE(before.ok() && after.ok()) << after.status().ToString();
  EXPECT_LT(*after, *before - 0.02);
}

// spill_state: the private B lives only on disk between tasks, so the idle client holds just its
// data, and the next task still starts from the B the last one left.
TEST(AdapterModesTest, FedSaPrivateBSpilledToDiskIsReadBackForTheNextTask) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap a_global = OnlyA(GlobalAdapter(Targets(lora), 4, 94));
  wire::AdapterPlan plan;
  plan.init = AdapterInit::kLocalB;
  ClientConfig config = Config("fedsa-spill");
  config.spill_state = true;
  auto worker = NewWorker(config);
  const std::uint64_t idle_before = LocalWorkerStateBytes(*worker);
  const Result<wire::Update> first = worker->Train(Task(1, lora, Training(6), plan, a_global), {});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(LocalWorkerStateBytes(*worker), idle_before);  // Nothing but the data in memory.
  EXPECT_EQ(first->metrics.at("state_bytes"), static_cast<double>(idle_before));
  const Result<wire::Update> second =
      worker->Train(Task(2, lora, Training(1, 0.0), plan, a_global), {});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(OnlyB(second->tensors), OnlyB(first->tensors));

  // Without spilling, the same client keeps B (rank 4 on every target) in memory as well.
  config.spill_state = false;
  auto keeper = NewWorker(config);
  ASSERT_TRUE(keeper->Train(Task(3, lora, Training(1, 0.0), plan, a_global), {}).ok());
  std::uint64_t b_bytes = 0;
  for (const wire::ModuleInfo& m : Targets(lora)) b_bytes += m.d_out * 4 * sizeof(float);
  EXPECT_EQ(LocalWorkerStateBytes(*keeper), idle_before + b_bytes);
}

TEST(AdapterModesTest, FedSaPrivateBPersistsAcrossTasksAndWorkersButNotAcrossRanks) {
  const wire::LoraSpec lora = Lora(4);
  const TensorMap a_global = OnlyA(GlobalAdapter(Targets(lora), 4, 92));
  wire::AdapterPlan plan;
  plan.init = AdapterInit::kLocalB;  // upload_b stays on so the test can see B.
  const ClientConfig config = Config("fedsa-store");
  auto worker = NewWorker(config);
  const Result<wire::Update> first = worker->Train(Task(1, lora, Training(6), plan, a_global), {});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const TensorMap b1 = OnlyB(first->tensors);
  for (const auto& [name, t] : b1) EXPECT_NE(t, Zeros(DType::kF32, t.shape)) << name;

  // The next task (lr 0) starts from the B the first one left, in this worker ...
  const Result<wire::Update> second =
      worker->Train(Task(2, lora, Training(1, 0.0), plan, a_global), {});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(OnlyB(second->tensors), b1);
  // ... and in a new worker on the same state directory (a restart).
  ClientConfig again = config;
  auto restarted = NewWorker(again);  // NewWorker does not clear the directory; Config() did.
  const Result<wire::Update> third =
      restarted->Train(Task(3, lora, Training(1, 0.0), plan, a_global), {});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(OnlyB(third->tensors), b1);
  bool stored = false;
  for (const auto& entry : std::filesystem::directory_iterator(config.state_dir)) {
    stored = stored || entry.path().filename().string().find(".lora_B.") != std::string::npos;
  }
  EXPECT_TRUE(stored);

  // Another rank: the stored B does not fit and is not reused; B starts from zero.
  const wire::LoraSpec lora2 = Lora(2);
  const TensorMap a2 = OnlyA(GlobalAdapter(Targets(lora2), 2, 93));
  const Result<wire::Update> other =
      restarted->Train(Task(4, lora2, Training(1, 0.0), plan, a2), {});
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  for (const auto& [name, t] : OnlyB(other->tensors)) {
    EXPECT_EQ(t, Zeros(DType::kF32, t.shape)) << name;
    EXPECT_EQ(t.shape[1], 2);
  }
  // Back at rank 4, the rank-4 B is still there.
  const Result<wire::Update> back =
      NewWorker(config)->Train(Task(5, lora, Training(1, 0.0), plan, a_global), {});
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(OnlyB(back->tensors), b1);
}

// ---- Bad tasks ----------------------------------------------------------------------------

TEST(AdapterModesTest, BadTasksAreRejectedWithInvalidArgumentNamingTheCulprit) {
  auto worker = NewWorker(Config("bad"));
  const wire::LoraSpec lora = Lora(4);
  const TensorMap global = GlobalAdapter(Targets(lora), 4, 101);
  const std::string q0 = "model.layers.0.self_attn.q_proj";
  const auto expect_invalid = [&](const wire::RoundTask& task, const std::string& culprit) {
    const Status s = worker->Train(task, {}).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(culprit));
  };
  wire::AdapterPlan plan;
  plan.modules = {{"model.layers.9.self_attn.q_proj", 4, {}}};
  expect_invalid(Task(1, lora, Training(1), plan, global), "model.layers.9.self_attn.q_proj");
  plan.modules = {{"model.layers.0.self_attn.k_proj", 4, {}}};  // Not a target.
  expect_invalid(Task(1, lora, Training(1), plan, global), "model.layers.0.self_attn.k_proj");

  TensorMap wrong = global;
  wrong[lora::LoraAName(q0)] = Zeros(DType::kF32, {3, 64});
  expect_invalid(Task(1, lora, Training(1), {}, wrong), lora::LoraAName(q0));
  TensorMap missing = global;
  missing.erase(lora::LoraBName(q0));
  expect_invalid(Task(1, lora, Training(1), {}, missing), "missing adapter tensor");
  TensorMap nonfinite = global;
  nonfinite[lora::LoraBName(q0)] = *ToWire(at::full({64, 4}, NAN, at::kFloat));
  expect_invalid(Task(1, lora, Training(1), {}, nonfinite), "NaN");

  wire::AdapterPlan sketched;
  sketched.mode = AdapterMode::kSketched;
  sketched.global_rank = 8;
  for (const wire::ModuleInfo& m : Targets(lora)) sketched.modules.push_back({m.name, 4, {0, 1, 2, 3}});
  sketched.modules[0].sketch = {0, 2, 2, 3};  // Repeated index.
  expect_invalid(Task(1, lora, Training(1), sketched, global), sketched.modules[0].module);
  sketched.modules[0].sketch = {0, 1, 2, 8};  // Beyond the global rank.
  expect_invalid(Task(1, lora, Training(1), sketched, global), "global_rank");

  wire::LoraSpec too_big = Lora(40);  // v_proj is 32 x 64.
  ClientConfig unlimited = Config("bad-rank");
  unlimited.capabilities.max_rank = 0;
  const Status s = NewWorker(unlimited)->Train(Task(1, too_big, Training(1), {}, {}), {}).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("v_proj"));
  EXPECT_THAT(s.message(), HasSubstr("exceeds"));

  wire::AdapterPlan fresh;
  fresh.init = AdapterInit::kFresh;
  expect_invalid(Task(1, lora, Training(1), fresh, global), "unknown adapter tensor");
  wire::AdapterPlan sb;
  sb.mode = AdapterMode::kLoraSb;
  TensorMap half;
  for (const wire::ModuleInfo& m : Targets(lora)) {
    half[LoraTensorName(m.name, LoraFactor::kR)] = Zeros(DType::kF32, {4, 4});
    half[lora::LoraBName(m.name)] = Zeros(DType::kF32, {m.d_out, 4});
  }
  expect_invalid(Task(1, lora, Training(1), sb, half), "lora_A");
  wire::AdapterPlan none;
  none.train_a = none.train_b = false;
  expect_invalid(Task(1, lora, Training(1), none, global), "neither");
}

}  // namespace fedlora::client::modes_test
