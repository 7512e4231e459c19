// fedlora-sim --workers: shards of virtual clients in separate processes serving a real
// fedlora-coordinator over tcp loopback, with the real stories260K model and tinyshakespeare.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/integration/subprocess.h"
#include "tests/testing/json_lines.h"

namespace fedlora {
namespace {

using testing::Subprocess;

const std::string kSource = FEDLORA_SOURCE_DIR;
const std::string kBinary = FEDLORA_BINARY_DIR;
// Bounds that only guard against a hung test.
constexpr std::chrono::seconds kRunLimit{400};

class SimWorkersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_sim_workers_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  // The coordinator of tests/sim/simulator_test.cc's Small(): 3 clients, tiny local training.
  std::unique_ptr<Subprocess> StartCoordinator(int rounds, int min_clients,
                                               std::vector<std::string> extra = {}) {
    const std::string path = dir_ + "/coordinator.yaml";
    std::ofstream(path) << "state_dir: " << dir_ << "/state\n"
                        << "rounds: " << rounds << "\nseed: 1234\nlog_level: info\n"
                        << "transport: {bind: 'tcp://127.0.0.1:*', heartbeat_interval_ms: 200,"
                           " heartbeat_liveness: 5}\n"
                        << "round: {min_clients: " << min_clients << ", quorum: " << min_clients
                        << ", timeout_ms: 120000}\n"
                        << "eval: {enabled: true, initial: true, max_batches: 2}\n"
                        << "lora: {rank: 8, alpha: 16, targets: [q_proj, v_proj]}\n"
                        << "train: {learning_rate: 0.003, local_steps: 4, batch_size: 4,"
                           " seq_len: 32}\n";
    std::vector<std::string> argv = {kBinary + "/server/fedlora-coordinator", "--config", path};
    for (std::string& s : extra) {
      argv.push_back("--set");
      argv.push_back(std::move(s));
    }
    return std::make_unique<Subprocess>(argv, dir_ + "/coordinator.log");
  }
  std::string EndpointOf(Subprocess& coordinator) {
    const auto m = coordinator.WaitFor(R"(coordinator listening on (tcp://[0-9.]+:[0-9]+))");
    EXPECT_TRUE(m.has_value()) << coordinator.output();
    return m ? (*m)[1] : "";
  }

  // The clients' half of the simulation config: every shard reads the same file, so every client
  // loads the same base model (the coordinator admits one digest) and the same partitioning.
  std::string WriteSimConfig(int num_clients) {
    const std::string path = dir_ + "/sim.yaml";
    std::ofstream(path)
        << "num_clients: " << num_clients << "\nthreads: 1\nlog_level: info\n"
        << "client:\n"
        << "  model: {path: " << kSource << "/assets/models/stories260K/stories260K.bin,"
        << " tokenizer: " << kSource << "/assets/models/stories260K/tok512.bin}\n"
        << "  data: {path: " << kSource << "/assets/datasets/tinyshakespeare/input.txt,"
        << " partition: speaker, partition_seed: 1234, max_eval_windows: 8}\n"
        << "  transport: {reconnect_min_ms: 100, reconnect_max_ms: 500}\n";
    return path;
  }

  // `env` (NAME=VALUE) is passed through /usr/bin/env, like a pod's environment.
  std::unique_ptr<Subprocess> StartShard(const std::string& config, const std::string& endpoint,
                                         std::vector<std::string> args,
                                         std::vector<std::string> env = {}) {
    std::vector<std::string> argv = {"/usr/bin/env", "-u", "FEDLORA_SHARD", "-u",
                                     "JOB_COMPLETION_INDEX"};
    argv.insert(argv.end(), env.begin(), env.end());
    const std::string name = "shard-" + std::to_string(++shards_started_);
    for (std::string a : {kBinary + "/sim/fedlora-sim", std::string("--workers"),
                          std::string("--config"), config, std::string("--coordinator"), endpoint,
                          std::string("--out"), dir_ + "/" + name}) {
      argv.push_back(std::move(a));
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return std::make_unique<Subprocess>(argv, dir_ + "/" + name + ".log");
  }

  std::string dir_;
  int shards_started_ = 0;
};

TEST_F(SimWorkersTest, TwoShardProcessesServeARemoteCoordinatorThroughTwoRounds) {
  auto coordinator = StartCoordinator(/*rounds=*/2, /*min_clients=*/3);
  const std::string endpoint = EndpointOf(*coordinator);
  ASSERT_FALSE(endpoint.empty());
  const std::string config = WriteSimConfig(3);
  // Shard 0 of 2 runs client-00 and client-02; shard 1 takes its index from the environment, as
  // a pod of a Kubernetes Indexed Job does.
  auto shard0 = StartShard(config, endpoint, {"--shard", "0", "--shards", "2"});
  auto shard1 = StartShard(config, endpoint, {"--shards", "2"}, {"JOB_COMPLETION_INDEX=1"});

  EXPECT_EQ(shard0->Wait(kRunLimit), 0) << shard0->output();
  EXPECT_EQ(shard1->Wait(kRunLimit), 0) << shard1->output();
  ASSERT_EQ(coordinator->Wait(kRunLimit), 0) << coordinator->output();

  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/state/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 3u) << coordinator->output();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(metrics[r]["round"], r);
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(metrics[r]["clients_selected"], 3);
    EXPECT_EQ(metrics[r]["clients_reported"], 3);
    EXPECT_TRUE(metrics[r]["train_loss"].is_number());
  }
  EXPECT_EQ(metrics[2]["eval_clients"], 3);

  // Global names, per-shard logs: one line when connected, one with the rounds each trained.
  EXPECT_NE(shard0->output().find("shard 0/2: all 2 sessions connecting"), std::string::npos)
      << shard0->output();
  EXPECT_NE(
      shard0->output().find("shard 0/2: run complete; rounds trained: client-00=2 client-02=2"),
      std::string::npos)
      << shard0->output();
  EXPECT_NE(shard1->output().find("shard 1/2: run complete; rounds trained: client-01=2"),
            std::string::npos)
      << shard1->output();
}

TEST_F(SimWorkersTest, ShardWithAnotherBaseModelIsRefusedAndExitsWithStatusOne) {
  auto coordinator = StartCoordinator(1, 1, {"base_model_sha256=" + std::string(64, 'a')});
  const std::string endpoint = EndpointOf(*coordinator);
  ASSERT_FALSE(endpoint.empty());
  auto shard = StartShard(WriteSimConfig(3), endpoint, {"--shard", "2", "--shards", "3"});
  EXPECT_EQ(shard->Wait(kRunLimit), 1) << shard->output();
  EXPECT_NE(shard->output().find("BASE_MODEL_MISMATCH"), std::string::npos) << shard->output();
  coordinator->Signal(SIGTERM);
  EXPECT_EQ(coordinator->Wait(kRunLimit), 0) << coordinator->output();
}

}  // namespace
}  // namespace fedlora
