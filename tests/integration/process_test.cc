// A coordinator and clients as separate OS processes over tcp loopback, with the real binaries,
// the real stories260K model and tinyshakespeare split by speaker.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/json_lines.h"
#include "common/fs.h"
#include "server/checkpoint_store.h"
#include "tests/integration/subprocess.h"

namespace fedlora {
namespace {

using testing::Subprocess;

const std::string kSource = FEDLORA_SOURCE_DIR;
const std::string kBinary = FEDLORA_BINARY_DIR;

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_process_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  // A small, fast federation: rank-4 LoRA on q/v, 3 local steps of 4 x 32 tokens.
  std::string WriteCoordinatorConfig(int rounds, int min_clients, int quorum) {
    const std::string path = dir_ + "/coordinator.yaml";
    std::ofstream(path) << "state_dir: " << dir_ << "/state\n"
                        << "rounds: " << rounds << "\nseed: 7\nlog_level: info\n"
                        << "transport: {bind: 'tcp://127.0.0.1:*', heartbeat_interval_ms: 200,"
                           " heartbeat_liveness: 5}\n"
                        << "round: {min_clients: " << min_clients << ", quorum: " << quorum
                        << ", timeout_ms: 120000}\n"
                        << "eval: {enabled: true, initial: true, max_batches: 2}\n"
                        << "lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}\n"
                        << "train: {learning_rate: 0.003, local_steps: 3, batch_size: 4,"
                           " seq_len: 32}\n";
    return path;
  }
  std::string WriteClientConfig(int partitions) {
    const std::string path = dir_ + "/client.yaml";
    std::ofstream(path)
        << "model: {path: " << kSource << "/assets/models/stories260K/stories260K.bin, tokenizer: "
        << kSource << "/assets/models/stories260K/tok512.bin}\n"
        << "data: {path: " << kSource << "/assets/datasets/tinyshakespeare/input.txt,"
        << " partition: speaker, num_partitions: " << partitions << ", max_eval_windows: 8}\n"
        << "threads: 1\n"
        << "transport: {reconnect_min_ms: 100, reconnect_max_ms: 500}\n";
    return path;
  }

  std::unique_ptr<Subprocess> StartCoordinator(const std::string& config,
                                               std::vector<std::string> sets = {}) {
    std::vector<std::string> argv = {kBinary + "/server/fedlora-coordinator", "--config", config};
    for (auto& s : sets) {
      argv.push_back("--set");
      argv.push_back(s);
    }
    return std::make_unique<Subprocess>(argv, dir_ + "/coordinator-" +
                                                  std::to_string(++coordinator_starts_) + ".log");
  }
  std::string EndpointOf(Subprocess& coordinator) {
    const auto m = coordinator.WaitFor(R"(coordinator listening on (tcp://[0-9.]+:[0-9]+))");
    EXPECT_TRUE(m.has_value()) << coordinator.output();
    return m ? (*m)[1] : "";
  }
  std::unique_ptr<Subprocess> StartClient(const std::string& config, int index,
                                          const std::string& endpoint,
                                          std::vector<std::string> sets = {}) {
    const std::string name = "client-" + std::to_string(index);
    std::vector<std::string> argv = {kBinary + "/client/fedlora-client", "--config", config,
                                     "--set", "name=" + name,
                                     "--set", "data.partition_index=" + std::to_string(index),
                                     "--set", "coordinator=" + endpoint};
    for (auto& s : sets) {
      argv.push_back("--set");
      argv.push_back(s);
    }
    return std::make_unique<Subprocess>(argv, dir_ + "/" + name + ".log");
  }

  std::vector<nlohmann::json> Metrics() const {
    return testing::ReadJsonLines(dir_ + "/state/metrics.jsonl");
  }

  std::string dir_;
  int coordinator_starts_ = 0;
};

TEST_F(ProcessTest, CoordinatorAndThreeClientProcessesCompleteTwoRounds) {
  auto coordinator = StartCoordinator(WriteCoordinatorConfig(2, 3, 3));
  const std::string endpoint = EndpointOf(*coordinator);
  const std::string client_config = WriteClientConfig(3);
  std::vector<std::unique_ptr<Subprocess>> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(StartClient(client_config, i, endpoint));
  for (auto& c : clients) EXPECT_EQ(c->Wait(), 0) << c->output();
  ASSERT_EQ(coordinator->Wait(), 0) << coordinator->output();

  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 3u);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(metrics[r]["round"], r);
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(metrics[r]["clients_reported"], 3);
    EXPECT_EQ(metrics[r]["strategy"], "fedavg");
    EXPECT_GT(metrics[r]["bytes_up"].get<double>(), 0);
    EXPECT_TRUE(metrics[r]["train_loss"].is_number());
  }
  EXPECT_LT(metrics[2]["eval_loss"].get<double>(), metrics[0]["eval_loss"].get<double>());
  // The newest checkpoint verifies against its manifest and holds the round-2 adapter.
  Result<server::CheckpointStore> store = server::CheckpointStore::Open(dir_ + "/state");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const auto latest = store->LoadLatest();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->round, 2u);
  EXPECT_EQ((*latest)->state.adapter.size(), 5u * 2 * 2);  // 5 layers x {q,v} x {A,B}.
}

TEST_F(ProcessTest, RoundCompletesWithTheQuorumWhenAClientIsKilledMidRound) {
  auto coordinator = StartCoordinator(WriteCoordinatorConfig(1, 3, 2));
  const std::string endpoint = EndpointOf(*coordinator);
  const std::string client_config = WriteClientConfig(3);
  auto c0 = StartClient(client_config, 0, endpoint);
  auto c1 = StartClient(client_config, 1, endpoint);
  // client-2 trains but never uploads; once it holds its update, it dies with SIGKILL.
  auto c2 = StartClient(client_config, 2, endpoint, {"faults.hold_update=true"});
  ASSERT_TRUE(c2->WaitFor("holding update for round 1").has_value()) << c2->output();
  c2->Signal(SIGKILL);
  EXPECT_EQ(c2->Wait(), 128 + SIGKILL);
  EXPECT_EQ(c0->Wait(), 0) << c0->output();
  EXPECT_EQ(c1->Wait(), 0) << c1->output();
  ASSERT_EQ(coordinator->Wait(), 0) << coordinator->output();
  EXPECT_TRUE(coordinator->WaitFor("client client-2 is gone").has_value());

  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[1]["clients_selected"], 3);
  EXPECT_EQ(metrics[1]["clients_reported"], 2);
  EXPECT_EQ(metrics[1]["clients_failed"], 1);
}

TEST_F(ProcessTest, CoordinatorRestartedFromItsStateDirContinuesAtTheNextRound) {
  const std::string coordinator_config = WriteCoordinatorConfig(3, 2, 2);
  auto coordinator = StartCoordinator(coordinator_config);
  const std::string endpoint = EndpointOf(*coordinator);
  const std::string client_config = WriteClientConfig(2);
  auto c0 = StartClient(client_config, 0, endpoint);
  auto c1 = StartClient(client_config, 1, endpoint);
  ASSERT_TRUE(coordinator->WaitFor(R"(round 1/3: .* committed)").has_value())
      << coordinator->output();
  coordinator->Signal(SIGTERM);
  ASSERT_EQ(coordinator->Wait(), 0) << coordinator->output();
  const std::vector<nlohmann::json> before = Metrics();
  ASSERT_GE(before.size(), 2u);

  // Same state dir, same endpoint: the clients reconnect on their own.
  auto restarted = StartCoordinator(coordinator_config, {"transport.bind=" + endpoint});
  const auto resumed = restarted->WaitFor(R"(resuming from checkpoint of round ([0-9]+))");
  ASSERT_TRUE(resumed.has_value()) << restarted->output();
  EXPECT_EQ(std::stoul((*resumed)[1]) + 1, before.size());
  EXPECT_EQ(c0->Wait(), 0) << c0->output();
  EXPECT_EQ(c1->Wait(), 0) << c1->output();
  ASSERT_EQ(restarted->Wait(), 0) << restarted->output();

  const std::vector<nlohmann::json> metrics = Metrics();
  ASSERT_EQ(metrics.size(), 4u);  // Rounds 0..3, each exactly once.
  for (int r = 0; r < 4; ++r) EXPECT_EQ(metrics[r]["round"], r);
  EXPECT_EQ(metrics[3]["clients_reported"], 2);
}

TEST_F(ProcessTest, ClientWithAnotherBaseModelIsRefusedAndExitsWithStatusOne) {
  const std::string config = WriteCoordinatorConfig(1, 1, 1);
  auto coordinator = StartCoordinator(config, {"base_model_sha256=" + std::string(64, 'a')});
  const std::string endpoint = EndpointOf(*coordinator);
  auto client = StartClient(WriteClientConfig(1), 0, endpoint);
  EXPECT_EQ(client->Wait(), 1) << client->output();
  EXPECT_NE(client->output().find("BASE_MODEL_MISMATCH"), std::string::npos);
  coordinator->Signal(SIGTERM);
  EXPECT_EQ(coordinator->Wait(), 0);
}

}  // namespace
}  // namespace fedlora
