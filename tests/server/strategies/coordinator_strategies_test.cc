// The coordinator driving strategies that need more than FedAvg: Fed-SB's initialisation phase
// and once-per-session frozen factors, FedEx-LoRA's base corrections and their versions. Real
// coordinator, real sockets (inproc), hand-driven peers.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "common/lora/peft.h"
#include "server/checkpoint_store.h"
#include "server/coordinator.h"
#include "server/strategies/make_strategy.h"
#include "tests/server/test_peer.h"
#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server {
namespace {

using fedlora::testing::MakeHello;
using fedlora::testing::TestPeer;

class CoordinatorStrategyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = ::testing::TempDir() + "/fedlora_coord_strategy_" + name_;
    std::filesystem::remove_all(dir_);
    config_.state_dir = dir_;
    config_.rounds = 2;
    config_.base_model_sha256 = std::string(64, 'd');
    config_.transport.bind = "inproc://coordinator-strategy-" + name_;
    config_.transport.heartbeat_interval_ms = 100;
    config_.transport.heartbeat_liveness = 1000;
    config_.round.min_clients = 2;
    config_.round.quorum = 2;
    config_.eval.enabled = false;
    config_.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj", "up_proj"}};
  }
  void TearDown() override {
    if (coordinator_) coordinator_->Stop();
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(dir_);
  }
  void Start(const std::string& strategy) {
    config_.strategy.name = strategy;
    auto s = MakeStrategy(config_.strategy, {.lora = config_.lora, .train = config_.train});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    coordinator_ = std::make_unique<Coordinator>(config_, std::move(s).value(), context_, clock_);
    ASSERT_TRUE(coordinator_->Start().ok());
    thread_ = std::thread([this] { result_ = coordinator_->Run(); });
  }
  static wire::Update Answer(const wire::RoundTask& task, const std::vector<std::string>& names,
                             std::uint64_t base_version, std::mt19937_64& rng) {
    wire::Update u;
    u.round = task.round;
    u.ticket = task.ticket;
    u.num_samples = u.num_examples = 10;
    u.metrics = {{"train_loss", 1.0}};
    u.base_version = base_version;
    for (const std::string& n : names) {
      const Tensor& like = task.tensors.at(n);
      u.tensors[n] = FromDoubles(DType::kF32, like.shape,
                                 ToDoubles(testing::Random(like.shape[0], like.shape[1], rng)));
    }
    return u;
  }

  std::string name_, dir_;
  CoordinatorConfig config_;
  net::Context context_;
  SystemClock clock_;
  std::unique_ptr<Coordinator> coordinator_;
  std::thread thread_;
  Status result_;
};

TEST_F(CoordinatorStrategyTest, FedSbAsksTheDeclaredClientForItsInitialStateFirst) {
  Start("fedsb");
  TestPeer plain(context_, coordinator_->endpoint());
  TestPeer data_owner(context_, coordinator_->endpoint());
  plain.Join(MakeHello("plain", config_.base_model_sha256, testing::kModules));
  wire::Hello hello = MakeHello("owner", config_.base_model_sha256, testing::kModules);
  hello.capabilities.can_initialize = true;
  data_owner.Join(hello);

  const wire::RoundTask init = data_owner.Expect<wire::RoundTask>();
  EXPECT_EQ(init.round, 0u);
  EXPECT_EQ(init.plan.mode, wire::AdapterMode::kLoraSbInit);
  wire::Update u;
  u.ticket = init.ticket;
  u.num_samples = u.num_examples = 1;
  std::mt19937_64 rng(1);
  for (const auto& m : testing::kModules) {
    u.tensors[lora::LoraBName(m.name)] = FromDoubles(DType::kF32, {m.d_out, 2}, ToDoubles(testing::Random(m.d_out, 2, rng)));
    u.tensors[lora::LoraAName(m.name)] = FromDoubles(DType::kF32, {2, m.d_in}, ToDoubles(testing::Random(2, m.d_in, rng)));
    u.tensors[m.name + ".lora_R.weight"] = FromDoubles(DType::kF32, {2, 2}, ToDoubles(testing::Random(2, 2, rng)));
  }
  data_owner.Send(u);
  data_owner.Expect<wire::Ack>();

  // Round 1: everyone gets R and, once per session, the frozen factors; only R goes back.
  const wire::RoundTask t1 = plain.Expect<wire::RoundTask>();
  EXPECT_EQ(t1.plan.mode, wire::AdapterMode::kLoraSb);
  const std::string b = lora::LoraBName(testing::kModules[0].name);
  const std::string r = testing::kModules[0].name + ".lora_R.weight";
  EXPECT_TRUE(t1.tensors.contains(b));
  EXPECT_EQ(t1.tensors.at(b), u.tensors.at(b));  // The initialiser's factors, as uploaded.
  const std::vector<std::string> rs = {r, testing::kModules[1].name + ".lora_R.weight"};
  plain.Send(Answer(t1, rs, 0, rng));
  data_owner.Send(Answer(data_owner.Expect<wire::RoundTask>(), rs, 0, rng));
  plain.Expect<wire::Ack>();
  data_owner.Expect<wire::Ack>();
  // Round 2: R only.
  const wire::RoundTask t2 = plain.Expect<wire::RoundTask>();
  EXPECT_FALSE(t2.tensors.contains(b));
  EXPECT_TRUE(t2.tensors.contains(r));
  plain.Send(Answer(t2, rs, 0, rng));
  data_owner.Send(Answer(data_owner.Expect<wire::RoundTask>(), rs, 0, rng));
  plain.Expect<wire::Ack>();
  plain.Expect<wire::Bye>();
  thread_.join();
  ASSERT_TRUE(result_.ok()) << result_.ToString();
  coordinator_.reset();  // Releases the state directory's lock.

  // The PEFT export is the standard LoRA B' = B R_g, A' = A at the same scale s = 2.
  const Checkpoint cp = *CheckpointStore::Open(dir_).value().LoadLatest().value();
  const lora::PeftAdapter peft = lora::ImportPeft(dir_ + "/peft").value();
  for (const auto& m : testing::kModules) {
    testing::Dense br = testing::Zero(m.d_out, 2), want = testing::Zero(m.d_out, m.d_in);
    testing::AddProduct(br, testing::FromTensor(cp.state.extra.at(lora::LoraBName(m.name))),
                        testing::FromTensor(cp.state.adapter.at(m.name + ".lora_R.weight")));
    const testing::Dense a = testing::FromTensor(cp.state.extra.at(lora::LoraAName(m.name)));
    testing::AddProduct(want, br, a, 2.0);
    const lora::PeftFactors& f = peft.modules.at(m.name);
    testing::Dense got = testing::Zero(m.d_out, m.d_in);
    testing::AddProduct(got, testing::FromTensor(f.b), testing::FromTensor(f.a),
                        peft.ScaleOf(m.name));
    // B R is rounded once to f32 (relative 2^-24 per entry); A is exact.
    testing::Dense bound = testing::Zero(m.d_out, m.d_in), abs_br = br, abs_a = a;
    for (double& x : abs_br.v) x = std::abs(x);
    for (double& x : abs_a.v) x = std::abs(x);
    testing::AddProduct(bound, abs_br, abs_a, 2.0 * 1.01 * std::ldexp(1.0, -24));
    for (std::size_t i = 0; i < want.v.size(); ++i) {
      EXPECT_LE(std::abs(got.v[i] - want.v[i]), bound.v[i]) << m.name << " entry " << i;
    }
  }
}

TEST_F(CoordinatorStrategyTest, FedExShipsEachClientTheCorrectionsItLacksAndChecksTheirVersion) {
  config_.round.quorum = 1;  // Round 2 completes with b alone once a's stale upload is refused.
  Start("fedex");
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", config_.base_model_sha256, testing::kModules));
  b.Join(MakeHello("b", config_.base_model_sha256, testing::kModules));
  std::vector<std::string> factors;
  for (const auto& m : testing::kModules) {
    factors.push_back(lora::LoraAName(m.name));
    factors.push_back(lora::LoraBName(m.name));
  }
  std::mt19937_64 rng(2);
  const wire::RoundTask a1 = a.Expect<wire::RoundTask>();
  EXPECT_TRUE(a1.base.entries.empty());
  EXPECT_EQ(a1.base.to_version, 0u);
  a.Send(Answer(a1, factors, 0, rng));
  b.Send(Answer(b.Expect<wire::RoundTask>(), factors, 0, rng));
  a.Expect<wire::Ack>();
  b.Expect<wire::Ack>();

  // Round 2 starts from base version 1: the residual of round 1, as factors in the task.
  const wire::RoundTask a2 = a.Expect<wire::RoundTask>();
  EXPECT_EQ(a2.base.from_version, 0u);
  EXPECT_EQ(a2.base.to_version, 1u);
  ASSERT_EQ(a2.base.entries.size(), 2u);  // One correction per module.
  for (const auto& e : a2.base.entries) {
    EXPECT_EQ(e.version, 1u);
    // Low-rank factors, or (on these tiny modules) the dense delta when that is smaller.
    EXPECT_TRUE(e.dense.empty() ? a2.tensors.contains(e.u) && a2.tensors.contains(e.v)
                                : a2.tensors.contains(e.dense));
  }
  // An update trained on the old base is refused...
  a.Send(Answer(a2, factors, 0, rng));
  EXPECT_EQ(a.ExpectError(), wire::ErrorCode::kBaseVersionMismatch);
  // ...and one on the new base accepted.
  const wire::RoundTask b2 = b.Expect<wire::RoundTask>();
  b.Send(Answer(b2, factors, 1, rng));
  b.Expect<wire::Ack>();
  b.Expect<wire::Bye>();
  thread_.join();
  EXPECT_TRUE(result_.ok()) << result_.ToString();
}

TEST_F(CoordinatorStrategyTest, FedExPeftExportAddsTheBaseCorrectionsToTheGlobalAdapter) {
  Start("fedex");
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", config_.base_model_sha256, testing::kModules));
  b.Join(MakeHello("b", config_.base_model_sha256, testing::kModules));
  std::vector<std::string> factors;
  for (const auto& m : testing::kModules) {
    factors.push_back(lora::LoraAName(m.name));
    factors.push_back(lora::LoraBName(m.name));
  }
  std::mt19937_64 rng(3);
  for (int round = 1; round <= 2; ++round) {
    const wire::RoundTask ta = a.Expect<wire::RoundTask>();
    const wire::RoundTask tb = b.Expect<wire::RoundTask>();
    a.Send(Answer(ta, factors, ta.base.to_version, rng));
    b.Send(Answer(tb, factors, tb.base.to_version, rng));
    a.Expect<wire::Ack>();
    b.Expect<wire::Ack>();
  }
  a.Expect<wire::Bye>();
  thread_.join();
  ASSERT_TRUE(result_.ok()) << result_.ToString();
  coordinator_.reset();  // Releases the state directory's lock.

  // What PEFT adds on the pristine base must be every base correction plus s B_g A_g.
  const Checkpoint cp = *CheckpointStore::Open(dir_).value().LoadLatest().value();
  const lora::PeftAdapter peft = lora::ImportPeft(dir_ + "/peft").value();
  for (const auto& m : testing::kModules) {
    testing::Dense want = testing::Zero(m.d_out, m.d_in), got = want;
    std::vector<const CorrectionEntry*> entries;
    if (cp.state.corrections.snapshot()) entries.push_back(&*cp.state.corrections.snapshot());
    for (const CorrectionEntry& e : cp.state.corrections.entries()) entries.push_back(&e);
    ASSERT_FALSE(entries.empty());
    for (const CorrectionEntry* e : entries) {
      const ModuleCorrection& c = e->modules.at(m.name);
      if (c.is_dense()) {
        const std::vector<double> d = ToDoubles(c.dense);
        for (std::size_t i = 0; i < d.size(); ++i) want.v[i] += d[i];
      } else {
        testing::AddProduct(want, testing::FromTensor(c.u), testing::FromTensor(c.v));
      }
    }
    testing::AddProduct(want, testing::FromTensor(cp.state.adapter.at(lora::LoraBName(m.name))),
                        testing::FromTensor(cp.state.adapter.at(lora::LoraAName(m.name))), 2.0);
    const lora::PeftFactors& f = peft.modules.at(m.name);
    testing::AddProduct(got, testing::FromTensor(f.b), testing::FromTensor(f.a),
                        peft.ScaleOf(m.name));
    // s = 2 and identity factors are exact in f32, so B' and A' hold the f32 state exactly.
    EXPECT_LT(testing::MaxAbsDiff(got, want), 1e-10) << m.name;
  }
}

}  // namespace
}  // namespace fedlora::server
