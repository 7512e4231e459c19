// Sessions per round (sim/fleet.h): virtual clients are records, and only those that check in for
// a round have sessions; private state goes with the client, not with its session.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/tensor.h"
#include "server/checkpoint_store.h"
#include "sim/simulator.h"
#include "tests/testing/json_lines.h"

namespace fedlora::sim {
namespace {

class PerRoundSessionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    out_ = ::testing::TempDir() + "/fedlora_per_round_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(out_);
  }
  void TearDown() override {
    std::filesystem::remove_all(out_);
    std::filesystem::remove_all(out_ + "-persistent");
  }

  // A shipped experiment shrunk to seconds, in `out`.
  static Result<SimConfig> Load(const std::string& name, const std::string& out,
                                std::vector<std::string> extra) {
    std::vector<std::string> overrides = {
        "log_level=warn", "coordinator.train.local_steps=3", "coordinator.train.batch_size=4",
        "coordinator.train.seq_len=32", "coordinator.eval.max_batches=1",
        "coordinator.lora.targets=[q_proj,v_proj]",
        // One client at a time, so that two runs train exactly alike.
        "batching.clients=1", "batching.lanes=1"};
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    return LoadSimConfig(FEDLORA_SOURCE_DIR "/configs/sim/" + name, overrides, out);
  }

  // Every FedSA-LoRA private-B file under `out`/clients, by file name, with its bytes.
  static std::map<std::string, std::string> PrivateFactors(const std::string& out) {
    std::map<std::string, std::string> files;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(out + "/clients")) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name.find(".lora_B.") != std::string::npos) {
        files[name] = fs::ReadFile(entry.path().string()).value();
      }
    }
    return files;
  }

  std::string out_;
};

// 3,000 clients, 10 a round: each round exactly the 10 that checked in are selected, and only the
// clients that were ever checked in have been tokenized or have a state directory.
TEST_F(PerRoundSessionsTest, APopulationOfRecordsChecksInTenClientsARound) {
  const Result<SimConfig> config =
      Load("shakespeare-fedavg.yaml", out_,
           {"num_clients=3000", "sessions=per_round", "coordinator.rounds=2",
            "coordinator.round.fraction=0.001", "coordinator.round.min_clients=10",
            "coordinator.round.quorum=10", "client.data.partition=sample",
            "client.data.sample_paragraphs=4"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const Status ran = RunSimulation(*config);
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(out_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 3u);
  for (std::size_t r = 1; r <= 2; ++r) {
    SCOPED_TRACE("round " + std::to_string(r));
    const nlohmann::json& m = metrics[r];
    EXPECT_EQ(m["clients_selected"], 10);
    EXPECT_EQ(m["clients_reported"], 10);
    EXPECT_EQ(m["simulation"]["checked_in"], 10);
    EXPECT_EQ(m["simulation"]["clients"], 3000);
  }
  // Rounds 0, 1 and 2 checked in 10 each: at most 30 clients ever had data or a directory.
  const double tokenized = metrics[2]["simulation"]["clients_tokenized"].get<double>();
  EXPECT_GE(tokenized, 10);
  EXPECT_LE(tokenized, 30);
  std::size_t dirs = 0;
  if (std::filesystem::exists(out_ + "/clients")) {
    for (const auto& entry : std::filesystem::directory_iterator(out_ + "/clients")) {
      dirs += entry.is_directory() ? 1 : 0;
    }
  }
  EXPECT_LE(dirs, 30u);
  EXPECT_LT(metrics[2]["eval_loss"].get<double>(), metrics[0]["eval_loss"].get<double>());
}

// FedSA-LoRA keeps each client's B on the client. Per round, a client's worker and session are
// built again at every selection, so its B must come back from its record's state directory bit
// for bit: with every client checked in every round, the run must equal the persistent run
// exactly — the global A and every private B. (Had B restarted from zeros, or been stored with
// less precision, the second round would differ.)
TEST_F(PerRoundSessionsTest, FedSaPrivateBRoundTripsAcrossSelectionsBitForBit) {
  const std::vector<std::string> common = {"num_clients=3", "coordinator.rounds=3",
                                           "coordinator.round.min_clients=3",
                                           "coordinator.round.quorum=3"};
  std::vector<std::string> per_round = common;
  per_round.push_back("sessions=per_round");
  const Result<SimConfig> a = Load("shakespeare-fedsa.yaml", out_ + "-persistent", common);
  const Result<SimConfig> b = Load("shakespeare-fedsa.yaml", out_, per_round);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE(RunSimulation(*a).ok());
  const Status ran = RunSimulation(*b);
  ASSERT_TRUE(ran.ok()) << ran.ToString();

  const std::map<std::string, std::string> persistent_b = PrivateFactors(out_ + "-persistent");
  const std::map<std::string, std::string> per_round_b = PrivateFactors(out_);
  ASSERT_EQ(persistent_b.size(), 3u);  // One B per client.
  EXPECT_TRUE(per_round_b == persistent_b);

  const auto latest = [](const std::string& dir) {
    return server::CheckpointStore::Open(dir).value().LoadLatest().value()->state.adapter;
  };
  const TensorMap global_a = latest(out_ + "-persistent");
  const TensorMap global_b = latest(out_);
  ASSERT_FALSE(global_a.empty());
  EXPECT_TRUE(global_a == global_b);
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(out_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 4u);
  EXPECT_EQ(metrics[3]["simulation"]["checked_in"], 3);
}

// configs/sim/scale-100k.yaml, one round: 100,000 clients as records, 100 checked in among the
// half the fleet has online, every one of them selected; reporters and fleet declines add up.
TEST_F(PerRoundSessionsTest, TheHundredThousandClientConfigCompletesARound) {
  const Result<SimConfig> config = LoadSimConfig(FEDLORA_SOURCE_DIR "/configs/sim/scale-100k.yaml",
                                                 {"coordinator.rounds=1", "log_level=warn"}, out_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_clients, 100000u);
  EXPECT_EQ(config->sessions, SessionMode::kPerRound);
  const Status ran = RunSimulation(*config);
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(out_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 2u);
  const nlohmann::json& m = metrics[1];
  const nlohmann::json& sim = m["simulation"];
  EXPECT_EQ(m["clients_selected"], 100);
  EXPECT_EQ(sim["checked_in"], 100);
  EXPECT_GT(sim["checkin_offline"].get<double>(), 0);  // availability 0.5
  EXPECT_EQ(sim["declined_offline"], 0);               // offline clients never checked in
  EXPECT_EQ(m["clients_reported"].get<double>() + sim["declined_dropout"].get<double>() +
                sim["declined_straggler"].get<double>(),
            100);
  EXPECT_EQ(sim["clients"], 100000);
  EXPECT_LE(sim["clients_tokenized"].get<double>(), 200);  // Rounds 0 and 1.
}

TEST_F(PerRoundSessionsTest, PerRoundSessionsAreRefusedWithCentralPrivacyAndWithShards) {
  const Result<SimConfig> dp = Load("shakespeare-dp.yaml", out_, {"sessions=per_round"});
  ASSERT_FALSE(dp.ok());
  EXPECT_NE(dp.status().message().find("coordinator.privacy"), std::string::npos)
      << dp.status().message();
  const Result<SimConfig> c = Load("shakespeare-fedavg.yaml", out_, {"sessions=per_round"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const Status shards =
      ValidatePlacement(*c, {.shard = 0, .shards = 2, .listen = "tcp://127.0.0.1:0"},
                        /*workers=*/false);
  EXPECT_FALSE(shards.ok());
  EXPECT_NE(shards.message().find("per_round"), std::string::npos) << shards.message();
  const Result<SimConfig> bad = Load("shakespeare-fedavg.yaml", out_, {"sessions=sometimes"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("sessions"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::sim
