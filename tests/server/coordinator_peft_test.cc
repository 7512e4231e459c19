// The coordinator writes every committed global adapter as a PEFT adapter directory (export
// section), driven over real inproc sockets by hand-written peers.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "common/lora/adapter_layout.h"
#include "common/lora/peft.h"
#include "common/safetensors.h"
#include "server/checkpoint_store.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"
#include "tests/server/test_peer.h"

namespace fedlora::server {
namespace {

using testing::MakeHello;
using testing::TestPeer;

const std::string kDigest(64, 'd');
const std::vector<wire::ModuleInfo> kModules = {{"model.layers.0.self_attn.q_proj", 6, 4},
                                                {"model.layers.0.self_attn.v_proj", 3, 4}};

class CoordinatorPeftTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = ::testing::TempDir() + "/fedlora_coord_peft_" + name;
    std::filesystem::remove_all(dir_);
    config_.state_dir = dir_ + "/state";
    config_.rounds = 1;
    config_.base_model_sha256 = kDigest;
    config_.transport.bind = "inproc://coordinator-peft-test-" + name;
    config_.transport.heartbeat_interval_ms = 100;
    config_.transport.heartbeat_liveness = 1000;
    config_.round.min_clients = 2;
    config_.round.timeout_ms = 60000;
    config_.eval.enabled = false;
    config_.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj", "v_proj"}};
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs one FedAvg round with two clients to completion.
  void RunOneRound() {
    Coordinator coordinator(
        config_,
        std::make_unique<FedAvg>(
            FedAvgConfig{.lora = config_.lora, .train = config_.train, .seed = config_.seed}),
        context_, clock_);
    ASSERT_TRUE(coordinator.Start().ok());
    Status result;
    std::thread thread([&] { result = coordinator.Run(); });
    {
      TestPeer a(context_, coordinator.endpoint());
      TestPeer b(context_, coordinator.endpoint());
      a.Join(MakeHello("a", kDigest, kModules));
      b.Join(MakeHello("b", kDigest, kModules));
      a.Send(Nudged(a.Expect<wire::RoundTask>(), 0.5));
      b.Send(Nudged(b.Expect<wire::RoundTask>(), -0.25));
      a.Expect<wire::Ack>();
      a.Expect<wire::Bye>();
    }
    thread.join();
    ASSERT_TRUE(result.ok()) << result.ToString();
  }
  static wire::Update Nudged(const wire::RoundTask& task, double delta) {
    wire::Update u;
    u.round = task.round;
    u.ticket = task.ticket;
    u.num_samples = u.num_examples = 10;
    for (const auto& [name, t] : task.tensors) {
      std::vector<double> v = ToDoubles(t);
      for (double& x : v) x += delta;
      u.tensors[name] = FromDoubles(DType::kF32, t.shape, v);
    }
    return u;
  }
  TensorMap CommittedAdapter() const {
    return CheckpointStore::Open(config_.state_dir).value().LoadLatest().value()->state.adapter;
  }

  std::string dir_;
  CoordinatorConfig config_;
  net::Context context_;
  SystemClock clock_;
};

TEST_F(CoordinatorPeftTest, CommittedRoundIsWrittenAsAPeftAdapter) {
  RunOneRound();
  const std::string peft_dir = config_.state_dir + "/peft";  // The default.
  const Result<lora::PeftAdapter> peft = lora::ImportPeft(peft_dir);
  ASSERT_TRUE(peft.ok()) << peft.status().ToString();
  EXPECT_EQ(peft->r, 2u);
  EXPECT_EQ(peft->lora_alpha, 4.0);
  EXPECT_EQ(peft->target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  // Exactly the committed global adapter of round 1, in f32.
  const lora::LoraAdapterValue value = lora::AdapterFromPeft(*peft).value();
  EXPECT_EQ(value.tensors, CommittedAdapter());
  const safetensors::File file = safetensors::Read(peft_dir + "/adapter_model.safetensors").value();
  EXPECT_EQ(file.metadata.at("fedlora.round"), "1");
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_TRUE(
      file.tensors.contains("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"));
}

TEST_F(CoordinatorPeftTest, ExportSectionChoosesDirectoryDtypeAndBaseModelName) {
  config_.export_config.peft_dir = dir_ + "/serving/adapter";
  config_.export_config.dtype = DType::kBF16;
  config_.export_config.base_model_name_or_path = "karpathy/tinyllamas";
  config_.export_config.peft_every_round = false;
  RunOneRound();
  EXPECT_FALSE(std::filesystem::exists(config_.state_dir + "/peft"));
  const safetensors::File file =
      safetensors::Read(dir_ + "/serving/adapter/adapter_model.safetensors").value();
  EXPECT_EQ(file.metadata.at("fedlora.round"), "1");
  for (const auto& [name, t] : file.tensors) EXPECT_EQ(t.dtype, DType::kBF16) << name;
  const nlohmann::json c =
      nlohmann::json::parse(fs::ReadFile(dir_ + "/serving/adapter/adapter_config.json").value());
  EXPECT_EQ(c["base_model_name_or_path"], "karpathy/tinyllamas");
  EXPECT_EQ(c["peft_type"], "LORA");
}

}  // namespace
}  // namespace fedlora::server
