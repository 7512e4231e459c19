// Base corrections (FedEx-LoRA, FLoRA) on real workers: replicas fed by the coordinator's own
// CorrectionLog stay bit-identical whether they follow round by round or join late, mismatched
// versions are refused, workers at one version share one overlay, and every forward pass runs
// on the corrected weights while the shared pristine model stays untouched.
#include "client/model/base_overlay.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "client/data/text_dataset.h"
#include "client/local_worker.h"
#include "client/torch_bridge.h"
#include "client/train/trainer.h"
#include "common/lora/factor_math.h"
#include "server/correction_log.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client::overlay_test {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

// Separate assets per replica, so no two replicas share an overlay through a cache: each one
// computes its weights itself.
std::shared_ptr<const ModelAssets> FreshAssets() {
  ModelConfig config;
  config.path = LegacyModelPath();
  config.tokenizer = TokenizerPath();
  Result<std::shared_ptr<const ModelAssets>> a = LoadModelAssets(config);
  FEDLORA_CHECK_MSG(a.ok(), a.status().ToString());
  return std::move(a).value();
}

std::unique_ptr<Worker> NewWorker(const std::string& name,
                                  std::shared_ptr<const ModelAssets> assets) {
  ClientConfig config;
  config.device = "cpu";  // Where the shared test model lives.
  config.name = name;
  config.data.path = ShakespearePath();
  config.data.partition = "speaker";
  config.data.num_partitions = 8;
  config.data.partition_index = 2;
  config.data.heldout_fraction = 0.1;
  config.state_dir = ::testing::TempDir() + "fedlora_overlay_" + name;
  Result<std::unique_ptr<Worker>> worker = MakeLocalWorker(config, std::move(assets));
  FEDLORA_CHECK_MSG(worker.ok(), worker.status().ToString());
  return std::move(worker).value();
}

const std::vector<std::string>& CorrectedModules() {
  static const std::vector<std::string> modules = {"model.layers.0.self_attn.q_proj",
                                                   "model.layers.1.self_attn.v_proj",
                                                   "model.layers.3.mlp.down_proj"};
  return modules;
}

const wire::ModuleInfo& Info(const std::string& name) {
  for (const wire::ModuleInfo& m : Stories260K().AdaptableModules()) {
    if (m.name == name) return m;
  }
  FEDLORA_CHECK_MSG(false, "no module ", name);
  return Stories260K().AdaptableModules().front();
}

at::Tensor Randn(std::vector<std::int64_t> shape, std::uint64_t seed, double scale) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kDouble) * scale;
}

// A FedEx-LoRA round as the coordinator logs it: the residual factors of three clients' rank-2
// adapters against the f32-rounded means, scale 2 folded in, stored in f32.
server::CorrectionEntry FedExEntry(std::uint64_t version) {
  server::CorrectionEntry entry;
  entry.version = version;
  std::uint64_t seed = version * 1000;
  for (const std::string& module : CorrectedModules()) {
    const wire::ModuleInfo& m = Info(module);
    std::vector<at::Tensor> as, bs;
    for (int k = 0; k < 3; ++k) {
      as.push_back(Randn({2, m.d_in}, ++seed, 0.1));
      bs.push_back(Randn({m.d_out, 2}, ++seed, 0.1));
    }
    const std::vector<double> w = {0.5, 0.3, 0.2};
    const at::Tensor a_g = lora::WeightedSum(as, w)->to(at::kFloat).to(at::kDouble);
    const at::Tensor b_g = lora::WeightedSum(bs, w)->to(at::kFloat).to(at::kDouble);
    const Result<lora::FactorPair> residual = lora::FedExResidual(as, bs, w, 2.0, a_g, b_g);
    FEDLORA_CHECK_MSG(residual.ok(), residual.status().ToString());
    server::ModuleCorrection c;
    c.u = *ToWire(residual->B, DType::kF32);
    c.v = *ToWire(residual->A, DType::kF32);
    entry.modules.emplace(module, std::move(c));
  }
  return entry;
}

// The compaction the coordinator performs: everything so far as one lossless pair per module,
// except the last module, which becomes a dense delta.
server::CorrectionEntry Snapshot(const server::CorrectionLog& log) {
  server::CorrectionEntry snapshot;
  snapshot.version = log.latest_version();
  for (const std::string& module : CorrectedModules()) {
    std::vector<lora::FactorPair> pairs;
    const auto add = [&](const server::CorrectionEntry& e) {
      const auto it = e.modules.find(module);
      if (it == e.modules.end()) return;
      if (it->second.is_dense()) {
        pairs.push_back({*FromWireAs(it->second.dense, at::kDouble),
                         at::eye(Info(module).d_in, at::kDouble)});
      } else {
        pairs.push_back({*FromWireAs(it->second.u, at::kDouble),
                         *FromWireAs(it->second.v, at::kDouble)});
      }
    };
    if (log.snapshot()) add(*log.snapshot());
    for (const server::CorrectionEntry& e : log.entries()) add(e);
    server::ModuleCorrection c;
    if (module == CorrectedModules().back()) {
      at::Tensor dense = at::zeros({Info(module).d_out, Info(module).d_in}, at::kDouble);
      for (const lora::FactorPair& p : pairs) dense += at::matmul(p.B, p.A);
      c.dense = *ToWire(dense, DType::kF32);
    } else {
      const Result<lora::FactorPair> compact = lora::Compact(pairs);
      FEDLORA_CHECK_MSG(compact.ok(), compact.status().ToString());
      c.u = *ToWire(compact->B, DType::kF32);
      c.v = *ToWire(compact->A, DType::kF32);
    }
    snapshot.modules.emplace(module, std::move(c));
  }
  return snapshot;
}

// Delivers `log`'s update for `worker` (at `*version`) in a cheap evaluation task.
Result<wire::BaseUpdate> Deliver(Worker& worker, const server::CorrectionLog& log,
                                 std::uint64_t* version) {
  wire::EvalTask task;
  task.round = log.latest_version();
  task.train.seq_len = 16;
  task.train.batch_size = 1;
  task.max_batches = 1;
  task.base = log.UpdateFor(*version, &task.tensors);
  FEDLORA_ASSIGN_OR_RETURN(const wire::EvalResult result, worker.Evaluate(task, {}));
  *version = result.base_version;
  return task.base;
}

void ExpectBitIdentical(const TensorMap& x, const TensorMap& y) {
  ASSERT_EQ(x.size(), y.size());
  for (const auto& [name, t] : x) {
    ASSERT_TRUE(y.contains(name)) << name;
    const Tensor& u = y.at(name);
    ASSERT_EQ(t.shape, u.shape) << name;
    ASSERT_EQ(t.data.size(), u.data.size()) << name;
    EXPECT_EQ(std::memcmp(t.data.data(), u.data.data(), t.data.size()), 0) << name;
  }
}

TEST(BaseOverlayTest, ReplicasFollowingRoundByRoundAndLateJoinersHoldBitIdenticalWeights) {
  server::CorrectionLog log;
  auto x = NewWorker("replica-x", FreshAssets());
  std::uint64_t x_version = 0;
  for (std::uint64_t round = 1; round <= 3; ++round) {
    log.Append(FedExEntry(round));
    const Result<wire::BaseUpdate> sent = Deliver(*x, log, &x_version);
    ASSERT_TRUE(sent.ok()) << sent.status().ToString();
    EXPECT_EQ(sent->rebase, round == 1);  // Later rounds are incremental.
    EXPECT_EQ(x_version, round);
  }
  EXPECT_EQ(x->Describe().base_version, 3u);

  // A late joiner replays the whole log in one rebase.
  auto y = NewWorker("replica-y", FreshAssets());
  std::uint64_t y_version = 0;
  ASSERT_TRUE(Deliver(*y, log, &y_version).ok());
  EXPECT_EQ(y_version, 3u);
  const TensorMap x3 = CorrectedBaseWeightsForTesting(*x);
  ASSERT_EQ(x3.size(), CorrectedModules().size());
  ExpectBitIdentical(x3, CorrectedBaseWeightsForTesting(*y));

  // The weights are pristine + Σ U·V (to f32 accuracy), and the pristine model is untouched.
  for (const std::string& module : CorrectedModules()) {
    at::Tensor expected = Stories260K().Weight(module + ".weight").to(at::kDouble);
    for (const server::CorrectionEntry& e : log.entries()) {
      const server::ModuleCorrection& c = e.modules.at(module);
      expected += at::matmul(*FromWireAs(c.u, at::kDouble), *FromWireAs(c.v, at::kDouble));
    }
    const at::Tensor got = *FromWireAs(x3.at(module + ".weight"), at::kDouble);
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-5) << module;
    EXPECT_GT((got - Stories260K().Weight(module + ".weight")).abs().max().item<double>(), 1e-4);
  }

  // Round 4 is compacted into a snapshot: X (now older than the snapshot) rebuilds from it.
  log.Append(FedExEntry(4));
  log.ReplaceWithSnapshot(Snapshot(log));
  const Result<wire::BaseUpdate> rebuilt = Deliver(*x, log, &x_version);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(rebuilt->rebase);
  log.Append(FedExEntry(5));
  const Result<wire::BaseUpdate> fifth = Deliver(*x, log, &x_version);
  ASSERT_TRUE(fifth.ok()) << fifth.status().ToString();
  EXPECT_FALSE(fifth->rebase);
  EXPECT_EQ(x_version, 5u);

  // A joiner at round 5 gets pristine + snapshot + round 5, and X's exact bits.
  auto z = NewWorker("replica-z", FreshAssets());
  std::uint64_t z_version = 0;
  const Result<wire::BaseUpdate> joined = Deliver(*z, log, &z_version);
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  EXPECT_TRUE(joined->rebase);
  EXPECT_EQ(joined->entries.size(), 2 * CorrectedModules().size());
  ExpectBitIdentical(CorrectedBaseWeightsForTesting(*x), CorrectedBaseWeightsForTesting(*z));
  // So is Y, catching up from round 3 (older than the snapshot: a rebase).
  ASSERT_TRUE(Deliver(*y, log, &y_version).ok());
  ExpectBitIdentical(CorrectedBaseWeightsForTesting(*x), CorrectedBaseWeightsForTesting(*y));
}

TEST(BaseOverlayTest, AnUpdateFromAnotherVersionIsRefusedAndChangesNothing) {
  server::CorrectionLog log;
  log.Append(FedExEntry(1));
  log.Append(FedExEntry(2));
  auto worker = NewWorker("mismatch", FreshAssets());
  std::uint64_t version = 0;
  ASSERT_TRUE(Deliver(*worker, log, &version).ok());
  ASSERT_EQ(version, 2u);
  const TensorMap before = CorrectedBaseWeightsForTesting(*worker);

  log.Append(FedExEntry(3));
  wire::RoundTask task;  // The coordinator believes the client is still at version 1.
  task.round = 3;
  task.lora.targets = {"q_proj"};
  task.base = log.UpdateFor(1, &task.tensors);
  ASSERT_FALSE(task.base.rebase);
  const Status s = worker->Train(task, {}).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.detail(), static_cast<std::uint32_t>(wire::ErrorCode::kBaseVersionMismatch));
  EXPECT_THAT(s.message(), HasSubstr("version 1"));
  EXPECT_EQ(worker->Describe().base_version, 2u);
  ExpectBitIdentical(CorrectedBaseWeightsForTesting(*worker), before);

  wire::EvalTask eval;
  eval.train.seq_len = 16;
  eval.max_batches = 1;
  eval.base = task.base;
  eval.tensors = task.tensors;
  EXPECT_EQ(worker->Evaluate(eval, {}).status().detail(),
            static_cast<std::uint32_t>(wire::ErrorCode::kBaseVersionMismatch));
  // The rebase the coordinator answers with works.
  eval.tensors.clear();
  eval.base = log.UpdateFor(std::numeric_limits<std::uint64_t>::max(), &eval.tensors);
  ASSERT_TRUE(eval.base.rebase);
  const Result<wire::EvalResult> healed = worker->Evaluate(eval, {});
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->base_version, 3u);
}

TEST(BaseOverlayTest, WorkersAtTheSameVersionShareOneOverlay) {
  const std::shared_ptr<const ModelAssets> assets = FreshAssets();
  server::CorrectionLog log;
  log.Append(FedExEntry(1));
  auto a = NewWorker("share-a", assets);
  auto b = NewWorker("share-b", assets);
  std::uint64_t va = 0, vb = 0;
  ASSERT_TRUE(Deliver(*a, log, &va).ok());  // A: [1].
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 1u);
  log.Append(FedExEntry(2));
  ASSERT_TRUE(Deliver(*a, log, &va).ok());  // A: [1] then [2], incrementally.
  ASSERT_TRUE(Deliver(*b, log, &vb).ok());  // B: one rebase [1, 2]: the same chain, shared.
  EXPECT_EQ(va, 2u);
  EXPECT_EQ(vb, 2u);
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 1u);
  auto c = NewWorker("share-c", assets);
  std::uint64_t vc = 0;
  ASSERT_TRUE(Deliver(*c, log, &vc).ok());
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 1u);
  ExpectBitIdentical(CorrectedBaseWeightsForTesting(*a), CorrectedBaseWeightsForTesting(*c));

  log.Append(FedExEntry(3));
  ASSERT_TRUE(Deliver(*a, log, &va).ok());
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 2u);  // A at 3; B and C at 2.
  ASSERT_TRUE(Deliver(*b, log, &vb).ok());
  ASSERT_TRUE(Deliver(*c, log, &vc).ok());
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 1u);  // Version 2 is gone with its last user.
  a.reset();
  b.reset();
  c.reset();
  EXPECT_EQ(LiveBaseOverlaysForTesting(*assets), 0u);
}

TEST(BaseOverlayTest, TrainingAndEvaluationRunOnTheCorrectedBaseAndReportItsVersion) {
  const std::string module = CorrectedModules()[0];
  const at::Tensor pristine = Stories260K().Weight(module + ".weight").clone();
  // A large dense correction, so the corrected model is clearly another model.
  wire::BaseUpdate update;
  update.from_version = 0;
  update.to_version = 7;
  TensorMap tensors;
  const at::Tensor delta = Randn({Info(module).d_out, Info(module).d_in}, 5, 0.05);
  tensors["base.7." + module + ".D"] = *ToWire(delta, DType::kF32);
  update.entries.push_back({7, module, "", "", "base.7." + module + ".D"});

  auto worker = NewWorker("corrected", FreshAssets());
  wire::EvalTask eval;
  eval.round = 7;
  eval.train.seq_len = 32;
  eval.train.batch_size = 4;
  eval.max_batches = 2;
  const Result<wire::EvalResult> plain = worker->Evaluate(eval, {});
  eval.base = update;
  eval.tensors = tensors;
  const Result<wire::EvalResult> corrected = worker->Evaluate(eval, {});
  ASSERT_TRUE(plain.ok() && corrected.ok()) << corrected.status().ToString();
  EXPECT_EQ(plain->base_version, 0u);
  EXPECT_EQ(corrected->base_version, 7u);
  EXPECT_EQ(worker->Describe().base_version, 7u);

  // The same evaluation on a model built with the corrected weight gives the same loss.
  std::map<std::string, at::Tensor> weights;
  for (const std::string& name : Stories260K().TensorNames()) {
    weights[name] = Stories260K().Weight(name);
  }
  const TensorMap corrected_weights = CorrectedBaseWeightsForTesting(*worker);
  weights[module + ".weight"] = *FromWireAsFloat(corrected_weights.at(module + ".weight"));
  EXPECT_TRUE(at::equal(weights[module + ".weight"],
                        (pristine.to(at::kDouble) + delta.to(at::kFloat).to(at::kDouble))
                            .to(at::kFloat)));
  const Result<std::shared_ptr<const LlamaModel>> model =
      LlamaModel::FromTensors(Stories260K().config(), weights);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ClientConfig config;
  config.device = "cpu";  // Where the shared test model lives.
  config.data.path = ShakespearePath();
  config.data.partition = "speaker";
  config.data.num_partitions = 8;
  config.data.partition_index = 2;
  config.data.heldout_fraction = 0.1;
  const Result<ClientData> data = LoadClientData(config.data, Tok512());
  ASSERT_TRUE(data.ok());
  const Result<EvalStats> reference =
      EvaluateLoss(**model, nullptr, data->heldout, {.seq_len = 32, .batch_size = 4, .max_batches = 2});
  ASSERT_TRUE(reference.ok());
  EXPECT_NEAR(corrected->loss, reference->loss, 1e-9);
  EXPECT_GT(std::abs(corrected->loss - plain->loss), 1e-3);

  // Training reports the version too, and the shared pristine model never changed.
  wire::RoundTask task;
  task.round = 8;
  task.lora.rank = 2;
  task.lora.targets = {"q_proj", "v_proj"};
  task.train.local_steps = 2;
  task.train.batch_size = 2;
  task.train.seq_len = 32;
  task.base.from_version = task.base.to_version = 7;
  const Result<wire::Update> trained = worker->Train(task, {});
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  EXPECT_EQ(trained->base_version, 7u);
  EXPECT_TRUE(at::equal(Stories260K().Weight(module + ".weight"), pristine));
  EXPECT_FALSE(Stories260K().Weight(module + ".weight").requires_grad());
}

TEST(BaseOverlayTest, MalformedCorrectionsAreRejectedNamingTheTensorAndChangeNothing) {
  const std::string module = CorrectedModules()[1];  // v_proj: 32 x 64.
  const auto apply = [&](const wire::BaseUpdate& update, const TensorMap& tensors) {
    return ApplyBaseUpdate(Stories260K(), nullptr, update, tensors).status();
  };
  wire::BaseUpdate update;
  update.to_version = 1;
  update.entries.push_back({1, module, "u", "v", ""});
  TensorMap tensors;
  tensors["u"] = Zeros(DType::kF32, {32, 3});
  tensors["v"] = Zeros(DType::kF32, {3, 64});
  EXPECT_TRUE(apply(update, tensors).ok());

  TensorMap bad = tensors;
  bad["v"] = Zeros(DType::kF32, {2, 64});
  EXPECT_THAT(apply(update, bad).message(), HasSubstr("'v'"));
  bad = tensors;
  bad["u"] = Zeros(DType::kF32, {64, 3});
  EXPECT_THAT(apply(update, bad).message(), HasSubstr("'u' has shape [64, 3]"));
  bad = tensors;
  bad.erase("v");
  EXPECT_THAT(apply(update, bad).message(), HasSubstr("missing tensor 'v'"));
  bad = tensors;
  bad["u"] = *ToWire(at::full({32, 3}, INFINITY, at::kFloat));
  EXPECT_THAT(apply(update, bad).message(), HasSubstr("NaN or infinity"));
  wire::BaseUpdate unknown = update;
  unknown.entries[0].module = "model.embed_tokens";
  EXPECT_EQ(apply(unknown, tensors).code(), StatusCode::kInvalidArgument);
  wire::BaseUpdate both = update;
  both.entries[0].dense = "u";
  EXPECT_THAT(apply(both, tensors).message(), HasSubstr("either"));
  wire::BaseUpdate late = update;
  late.entries[0].version = 2;
  EXPECT_THAT(apply(late, tensors).message(), HasSubstr("outside"));

  // Applying never touches the pristine weights, even for the good update.
  const at::Tensor before = Stories260K().Weight(module + ".weight").clone();
  tensors["u"] = *ToWire(at::ones({32, 3}, at::kFloat));
  tensors["v"] = *ToWire(at::ones({3, 64}, at::kFloat));
  const Result<std::shared_ptr<const BaseOverlay>> overlay =
      ApplyBaseUpdate(Stories260K(), nullptr, update, tensors);
  ASSERT_TRUE(overlay.ok());
  EXPECT_EQ((*overlay)->corrected_modules(), 1u);
  EXPECT_TRUE(at::equal(Stories260K().Weight(module + ".weight"), before));
}

TEST(BaseOverlayTest, GradientsWithRespectToBaseWeightsLeaveTheModelUntouched) {
  const std::vector<std::size_t> indices = {0, 6};
  const at::Tensor w0 = Stories260K().ModuleWeight(0).clone();
  std::vector<TokenId> stream(200);
  for (std::size_t i = 0; i < stream.size(); ++i) stream[i] = static_cast<TokenId>(3 + (i * 7) % 500);
  const std::vector<TokenWindow> windows = MakeWindows(stream.size(), 16);
  const Result<BaseGradients> g =
      AccumulateBaseGradients(Stories260K(), indices, stream, windows, 4);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ(g->grads.size(), 2u);
  EXPECT_GT(g->grads[0].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(g->samples, windows.size());
  EXPECT_TRUE(at::equal(Stories260K().ModuleWeight(0), w0));
  EXPECT_FALSE(Stories260K().ModuleWeight(0).requires_grad());
  EXPECT_FALSE(Stories260K().ModuleWeight(0).grad().defined());
}

}  // namespace fedlora::client::overlay_test
