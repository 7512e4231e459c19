#include "sim/simulator.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/json_lines.h"
#include "tests/testing/tensor_compare.h"
#include "server/checkpoint_store.h"
#include "common/tensor.h"

namespace fedlora::sim {
namespace {

const std::string kConfig = FEDLORA_SOURCE_DIR "/configs/sim/shakespeare-fedavg.yaml";

class SimulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    out_ = ::testing::TempDir() + "/fedlora_sim_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(out_);
  }
  void TearDown() override { std::filesystem::remove_all(out_); }

  // The shipped experiment, shrunk to seconds: 3 clients, tiny local training.
  Result<SimConfig> Small(std::vector<std::string> extra = {}) {
    std::vector<std::string> overrides = {
        "num_clients=3",
        "log_level=warn",
        "coordinator.round.min_clients=3",
        "coordinator.round.quorum=2",
        "coordinator.train.local_steps=4",
        "coordinator.train.batch_size=4",
        "coordinator.train.seq_len=32",
        "coordinator.eval.max_batches=2",
        "coordinator.lora.targets=[q_proj,v_proj]"};
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    return LoadSimConfig(kConfig, overrides, out_);
  }

  std::vector<nlohmann::json> Metrics() const {
    return testing::ReadJsonLines(out_ + "/metrics.jsonl");
  }

  std::string out_;
};

TEST_F(SimulatorTest, ShippedExperimentLoadsAsDocumented) {
  const Result<SimConfig> c = LoadSimConfig(kConfig, {}, out_);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_clients, 8u);
  EXPECT_EQ(c->coordinator.rounds, 5u);
  EXPECT_EQ(c->coordinator.strategy.name, "fedavg");
  EXPECT_EQ(c->client.data.partition, "speaker");
  EXPECT_EQ(c->coordinator.lora.targets.size(), 7u);
}

TEST_F(SimulatorTest, UnknownKeyInASectionNamesTheSectionAndKey) {
  const Result<SimConfig> c = LoadSimConfig(kConfig, {"client.data.partitions=3"}, out_);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("client.data.partitions"), std::string::npos)
      << c.status().message();
}

TEST_F(SimulatorTest, SmallFederationRunsEveryRoundAndResumesFromItsOutput) {
  Result<SimConfig> config = Small({"coordinator.rounds=2"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(RunSimulation(*config).ok());
  std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 3u);
  EXPECT_EQ(metrics[1]["clients_reported"], 3);
  EXPECT_EQ(metrics[2]["eval_clients"], 3);
  EXPECT_LT(metrics[2]["eval_loss"].get<double>(), metrics[0]["eval_loss"].get<double>());

  // Same output directory, one more round: only round 3 runs.
  config = Small({"coordinator.rounds=3"});
  ASSERT_TRUE(RunSimulation(*config).ok());
  metrics = Metrics();
  ASSERT_EQ(metrics.size(), 4u);
  EXPECT_EQ(metrics[3]["round"], 3);
  const auto latest = server::CheckpointStore::Open(out_).value().LoadLatest().value();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->round, 3u);
}

// One client per group (batching.clients = 1) trains alone, in turn: reruns are bit-identical.
// Batched groups (the default) are formed by arrival and equal this only up to float rounding;
// the next test bounds that.
TEST_F(SimulatorTest, SameSeedGivesTheSameGlobalAdapter) {
  Result<SimConfig> config = Small({"coordinator.rounds=1", "batching.clients=1"});
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(RunSimulation(*config).ok());
  const TensorMap first =
      server::CheckpointStore::Open(out_).value().LoadLatest().value()->state.adapter;
  std::filesystem::remove_all(out_);
  ASSERT_TRUE(RunSimulation(*config).ok());
  const TensorMap second =
      server::CheckpointStore::Open(out_).value().LoadLatest().value()->state.adapter;
  EXPECT_EQ(first, second);  // Bit-identical.
}

TEST_F(SimulatorTest, BatchedClientsReachTheGlobalAdapterOfClientsTrainingOneByOne) {
  // eps 1e-3: rounding-level gradients do not flip AdamW's steps (batched_trainer_test.cc).
  Result<SimConfig> config =
      Small({"coordinator.rounds=2", "batching.clients=1", "coordinator.train.eps=0.001"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(RunSimulation(*config).ok());
  const TensorMap alone =
      server::CheckpointStore::Open(out_).value().LoadLatest().value()->state.adapter;
  std::filesystem::remove_all(out_);
  config = Small({"coordinator.rounds=2", "batching.clients=3", "coordinator.train.eps=0.001"});
  ASSERT_TRUE(RunSimulation(*config).ok());
  const TensorMap batched =
      server::CheckpointStore::Open(out_).value().LoadLatest().value()->state.adapter;
  EXPECT_LE(testing::WorstRelativeDifference(alone, batched), 1e-5);
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 3u);
  const nlohmann::json& sim = metrics[2]["simulation"];
  EXPECT_EQ(sim["batched_clients"], 3);
  EXPECT_GE(sim["batched_groups"].get<double>(), 1);
  EXPECT_EQ(sim["clients"], 3);
  EXPECT_GT(sim["peak_rss_mb"].get<double>(), 0);
  EXPECT_GT(sim["client_state_bytes_mean"].get<double>(), 0);
  // q_proj and v_proj of 5 layers at rank 8 (A 8x64, B 64x8 and 8x64, 32x8): 16 bytes a scalar.
  EXPECT_EQ(sim["train_state_bytes_per_client"], 5 * (2 * 8 * 64 + 8 * 64 + 32 * 8) * 16);
}

// A fleet where client 2 trains at 5 tokens/s (512 tokens: 102 s) cannot make a 60 s virtual
// deadline: it declines, and the coordinator aggregates the other two at the quorum; the round's
// virtual time is the deadline the coordinator waited for it.
TEST_F(SimulatorTest, AVirtualStragglerMissesTheDeadlineAndTheRoundGoesOnWithoutIt) {
  const std::string trace = out_ + "-trace.csv";
  std::ofstream(trace) << "client,tokens_per_second\n2,5\n";
  Result<SimConfig> config = Small({
      "coordinator.rounds=2",
      "fleet.seed=5",
      "fleet.tokens_per_second={distribution: constant, value: 2000}",
      "fleet.downlink_mbps={distribution: constant, value: 10}",
      "fleet.uplink_mbps={distribution: constant, value: 1}",
      "fleet.deadline_s=60",
      "fleet.trace=" + trace,
  });
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(RunSimulation(*config).ok());
  std::filesystem::remove(trace);
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 3u);
  double elapsed = 0;
  for (std::size_t r = 1; r <= 2; ++r) {
    SCOPED_TRACE("round " + std::to_string(r));
    const nlohmann::json& m = metrics[r];
    EXPECT_EQ(m["clients_reported"], 2);
    EXPECT_EQ(m["clients_failed"], 1);
    EXPECT_EQ(m["weights"].count("client-02"), 0u);
    const nlohmann::json& sim = m["simulation"];
    EXPECT_EQ(sim["declined_straggler"], 1);
    EXPECT_EQ(sim["declined_offline"], 0);
    EXPECT_DOUBLE_EQ(sim["virtual_round_s"].get<double>(), 60.0);
    // The reporters: 4 steps x 4 rows x 32 tokens at 2000 tokens/s, plus the transfers.
    EXPECT_GT(sim["slowest_reporter_s"].get<double>(), 512.0 / 2000);
    EXPECT_LT(sim["slowest_reporter_s"].get<double>(), 60.0);
    elapsed += 60.0;
    EXPECT_DOUBLE_EQ(sim["virtual_elapsed_s"].get<double>(), elapsed);
  }
}

// configs/sim/scale-1000.yaml, one round: 1000 sessions on one base, 50 selected, every one of
// them either reported or declined for a reason the fleet model gave.
TEST_F(SimulatorTest, AClientSessionThatCannotOpenStopsTheRunWithAnErrorNamingTheLimit) {
  // Room for the coordinator's sockets but not for every client's: some sessions cannot open.
  // The run must end with that error, not wait for the missing clients.
  const Result<SimConfig> config = Small({"max_sockets=2"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const Status ran = RunSimulation(*config);
  ASSERT_FALSE(ran.ok());
  EXPECT_NE(ran.message().find("a client session failed"), std::string::npos) << ran.message();
  EXPECT_NE(ran.message().find("ZeroMQ max_sockets 2"), std::string::npos) << ran.message();
}

TEST_F(SimulatorTest, TheThousandClientConfigCompletesARound) {
  const Result<SimConfig> config =
      LoadSimConfig(FEDLORA_SOURCE_DIR "/configs/sim/scale-1000.yaml",
                    {"coordinator.rounds=1", "log_level=warn"}, out_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_clients, 1000u);
  EXPECT_TRUE(config->fleet.enabled);
  ASSERT_TRUE(RunSimulation(*config).ok());
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 2u);
  const nlohmann::json& m = metrics[1];
  const nlohmann::json& sim = m["simulation"];
  EXPECT_EQ(m["clients_selected"], 50);
  EXPECT_GE(m["clients_reported"].get<int>(), 30);  // quorum_fraction 0.6
  EXPECT_EQ(m["clients_reported"].get<double>() + sim["declined_offline"].get<double>() +
                sim["declined_dropout"].get<double>() + sim["declined_straggler"].get<double>(),
            50);
  EXPECT_EQ(sim["clients"], 1000);
  EXPECT_GT(sim["virtual_round_s"].get<double>(), 0);
  EXPECT_LE(sim["virtual_round_s"].get<double>(), 10.0);  // fleet.deadline_s
  EXPECT_EQ(sim["batched_clients"], m["clients_reported"]);
}

// ZeroMQ's default limit of 1,023 sockets per context once stopped simulations at ~1,020 clients
// (the rest failed to open and the coordinator waited for them forever). With the limits set
// from the session count (session_limits.h), 2,000 clients start and a round of 10 completes.
TEST_F(SimulatorTest, MoreClientsThanZeroMqsDefaultSocketLimitCompleteARound) {
  const Result<SimConfig> config =
      LoadSimConfig(FEDLORA_SOURCE_DIR "/configs/sim/scale-1000.yaml",
                    {"num_clients=2000", "coordinator.round.fraction=0.005",
                     "coordinator.round.min_clients=10", "coordinator.rounds=1", "log_level=warn"},
                    out_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const Status ran = RunSimulation(*config);
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[1]["clients_selected"], 10);
  EXPECT_EQ(metrics[1]["simulation"]["clients"], 2000);
  EXPECT_GE(metrics[1]["clients_reported"].get<int>(), 6);  // quorum_fraction 0.6
}

// The shipped classification experiment, shrunk: SpamAssassin records with Dirichlet label skew
// train and report label-token accuracy next to its majority-class baseline.
TEST_F(SimulatorTest, ClassificationExperimentReportsAccuracyAndItsBaseline) {
  const char* spam = FEDLORA_SOURCE_DIR "/../shared/data/datasets/spamassassin/spamassassin.jsonl.gz";
  if (!std::filesystem::exists(spam)) GTEST_SKIP() << "no " << spam;
  Result<SimConfig> config = LoadSimConfig(
      FEDLORA_SOURCE_DIR "/configs/sim/spam-dirichlet.yaml",
      {"num_clients=3", "log_level=warn", "coordinator.rounds=1",
       "coordinator.round.min_clients=3", "coordinator.round.quorum=3",
       "coordinator.train.local_steps=3", "coordinator.lora.targets=[q_proj,v_proj]",
       "client.data.max_records=150", "client.data.max_text_chars=80",
       "client.data.max_eval_windows=8"},
      out_);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(RunSimulation(*config).ok());
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 2u);
  for (const nlohmann::json& m : metrics) {
    ASSERT_TRUE(m["eval_accuracy"].is_number()) << m.dump();
    ASSERT_TRUE(m["eval_majority_accuracy"].is_number()) << m.dump();
    EXPECT_GE(m["eval_accuracy"].get<double>(), 0.0);
    EXPECT_LE(m["eval_accuracy"].get<double>(), 1.0);
    EXPECT_GE(m["eval_majority_accuracy"].get<double>(), 0.5);  // Two classes.
    EXPECT_GT(m["eval_examples"].get<std::uint64_t>(), 0u);
    EXPECT_TRUE(m["eval_exact_match"].is_null());
  }
  EXPECT_LT(metrics[1]["eval_loss"].get<double>(), metrics[0]["eval_loss"].get<double>());
}

// GSM8K through the instruction path: masked-prompt training, and exact match from greedy
// generations reported per round (stories260K cannot solve grade-school maths: the number is 0,
// but it is measured).
TEST_F(SimulatorTest, InstructionExperimentReportsExactMatch) {
  const char* gsm8k = FEDLORA_SOURCE_DIR "/../shared/data/datasets/gsm8k/test.jsonl";
  if (!std::filesystem::exists(gsm8k)) GTEST_SKIP() << "no " << gsm8k;
  Result<SimConfig> config = Small({"coordinator.rounds=1", "client.data.format=gsm8k",
                                    std::string("client.data.path=") + gsm8k,
                                    "client.data.partition=iid", "client.data.max_records=60",
                                    "client.data.max_tokens=257", "client.data.heldout_fraction=0.2",
                                    "client.data.max_eval_generations=2",
                                    "client.data.max_new_tokens=6"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(RunSimulation(*config).ok());
  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 2u);
  ASSERT_TRUE(metrics[1]["eval_exact_match"].is_number()) << metrics[1].dump();
  EXPECT_TRUE(metrics[1]["eval_accuracy"].is_null());
  EXPECT_LT(metrics[1]["eval_loss"].get<double>(), metrics[0]["eval_loss"].get<double>());
}

}  // namespace
}  // namespace fedlora::sim
