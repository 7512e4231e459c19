// A federation with keys, made exactly as README.md's "Two machines, with keys" says: the real
// fedlora-coordinator and fedlora-client binaries, their keygen and `clients add` commands, CURVE
// over tcp loopback, the real stories260K model and tinyshakespeare.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "tests/integration/subprocess.h"
#include "tests/testing/json_lines.h"

namespace fedlora {
namespace {

using testing::Subprocess;

const std::string kSource = FEDLORA_SOURCE_DIR;
const std::string kBinary = FEDLORA_BINARY_DIR;
const std::string kCoordinator = kBinary + "/server/fedlora-coordinator";
const std::string kClient = kBinary + "/client/fedlora-client";
const std::string kSim = kBinary + "/sim/fedlora-sim";

class SecureFederationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_secure_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  // Runs a short command to its end; returns its output, failing the test on a non-zero exit.
  std::string Run(std::vector<std::string> argv, int expected_exit = 0) {
    Subprocess p(std::move(argv));
    EXPECT_EQ(p.Wait(), expected_exit) << p.output();
    return p.output();
  }
  static std::string Match(const std::string& text, const std::string& pattern) {
    std::smatch m;
    const std::regex re(pattern);
    EXPECT_TRUE(std::regex_search(text, m, re)) << pattern << " in:\n" << text;
    return m.size() > 1 ? m[1].str() : "";
  }

  std::string WriteCoordinatorConfig() {
    const std::string path = dir_ + "/coordinator.yaml";
    std::ofstream(path) << "state_dir: " << dir_ << "/state\nrounds: 1\nseed: 7\n"
                        << "transport: {bind: 'tcp://127.0.0.1:*', heartbeat_interval_ms: 200,"
                           " heartbeat_liveness: 5}\n"
                        << "security: {mode: curve, secret_key_file: keys/coordinator.key_secret,"
                           " authorized_clients: authorized_clients}\n"
                        << "round: {min_clients: 2, quorum: 2, timeout_ms: 120000}\n"
                        << "eval: {enabled: true, initial: false, max_batches: 2}\n"
                        << "lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}\n"
                        << "train: {learning_rate: 0.003, local_steps: 3, batch_size: 4,"
                           " seq_len: 32}\n";
    return path;
  }
  std::string WriteClientConfig(const std::string& coordinator_key) {
    const std::string path = dir_ + "/client.yaml";
    std::ofstream(path)
        << "model: {path: " << kSource << "/assets/models/stories260K/stories260K.bin, tokenizer: "
        << kSource << "/assets/models/stories260K/tok512.bin}\n"
        << "data: {path: " << kSource << "/assets/datasets/tinyshakespeare/input.txt,"
        << " partition: speaker, num_partitions: 3, max_eval_windows: 8}\n"
        << "threads: 1\n"
        << "transport: {reconnect_min_ms: 100, reconnect_max_ms: 500}\n"
        << "security: {coordinator_public_key: \"" << coordinator_key << "\"}\n";
    return path;
  }
  std::unique_ptr<Subprocess> StartClient(const std::string& config, const std::string& name,
                                          int partition, const std::string& endpoint,
                                          const std::string& key_name = "") {
    return std::make_unique<Subprocess>(
        std::vector<std::string>{
            kClient, "--config", config, "--set", "name=" + name, "--set",
            "data.partition_index=" + std::to_string(partition), "--set",
            "coordinator=" + endpoint, "--set",
            "security.secret_key_file=" + dir_ + "/keys/" + (key_name.empty() ? name : key_name) +
                ".key_secret"},
        dir_ + "/" + name + ".log");
  }

  std::string dir_;
};

TEST_F(SecureFederationTest, KeysMadeWithTheCommandLineToolsLetClientsTrainOverCurve) {
  // README.md's order: the operator makes the coordinator's key pair and starts it (nobody is
  // enrolled yet); each data owner makes a key pair and sends the line it prints; the operator
  // enrolls it, and the running coordinator picks the new file up.
  const std::string keygen = Run({kCoordinator, "keygen", "--dir", dir_ + "/keys"});
  const std::string coordinator_key = Match(keygen, R"(public key:\s+(\S+))");
  ASSERT_EQ(coordinator_key.size(), 40u);
  auto coordinator = std::make_unique<Subprocess>(
      std::vector<std::string>{kCoordinator, "--config", WriteCoordinatorConfig()},
      dir_ + "/coordinator.log");
  const auto listening = coordinator->WaitFor(R"(coordinator listening on (tcp://[0-9.]+:[0-9]+))");
  ASSERT_TRUE(listening.has_value()) << coordinator->output();
  const std::string endpoint = (*listening)[1];
  EXPECT_NE(coordinator->output().find("security: CURVE"), std::string::npos);
  EXPECT_NE(coordinator->output().find("no client is enrolled yet"), std::string::npos);
  for (const std::string name : {"alice", "bob", "mallory"}) {
    const std::string out = Run({kClient, "keygen", "--name", name, "--dir", dir_ + "/keys"});
    const std::string line = Match(out, "\n  (" + name + " \\S+)\n");
    if (name == "mallory") continue;  // Never enrolled.
    if (name == "alice") {  // By the key text, as sent by e-mail...
      Run({kCoordinator, "clients", "add", name, line.substr(name.size() + 1), "--file",
           dir_ + "/authorized_clients"});
    } else {  // ...or by the public key file.
      Run({kCoordinator, "clients", "add", name, "--key-file", dir_ + "/keys/" + name + ".key",
           "--file", dir_ + "/authorized_clients"});
    }
  }
  const std::string listed = Run({kCoordinator, "clients", "list", "--file",
                                  dir_ + "/authorized_clients"});
  EXPECT_NE(listed.find("2 client name(s) enrolled"), std::string::npos) << listed;
  ASSERT_TRUE(coordinator->WaitFor("authorized clients reloaded: 2 name").has_value())
      << coordinator->output();
  coordinator->Signal(SIGHUP);  // Also re-read on request.
  EXPECT_TRUE(coordinator->WaitFor("authorized clients re-read: no change").has_value())
      << coordinator->output();
  const std::string client_config = WriteClientConfig(coordinator_key);

  // Refused at once, each with its own exit status: a key that is not enrolled (5), a client
  // that pinned another coordinator key (6), a plaintext client (6).
  auto mallory = StartClient(client_config, "mallory", 2, endpoint);
  EXPECT_EQ(mallory->Wait(), 5) << mallory->output();
  EXPECT_NE(mallory->output().find("refused this client's key"), std::string::npos);
  auto misled = std::make_unique<Subprocess>(std::vector<std::string>{
      kClient, "--config", client_config, "--set", "name=alice", "--set",
      "coordinator=" + endpoint, "--set",
      "security.secret_key_file=" + dir_ + "/keys/alice.key_secret", "--set",
      "security.coordinator_public_key=\"" + Match(Run({kCoordinator, "keygen", "--dir",
                                                        dir_ + "/other", "--name", "impostor"}),
                                                   R"(public key:\s+(\S+))") +
          "\""});
  EXPECT_EQ(misled->Wait(), 6) << misled->output();
  EXPECT_NE(misled->output().find("not its key"), std::string::npos) << misled->output();
  auto plain = std::make_unique<Subprocess>(std::vector<std::string>{
      kClient, "--config", client_config, "--set", "name=alice", "--set",
      "coordinator=" + endpoint, "--set", "security.mode=none"});
  EXPECT_EQ(plain->Wait(), 6) << plain->output();
  EXPECT_NE(plain->output().find("requires CURVE"), std::string::npos) << plain->output();

  auto alice = StartClient(client_config, "alice", 0, endpoint);
  auto bob = StartClient(client_config, "bob", 1, endpoint);
  EXPECT_EQ(alice->Wait(), 0) << alice->output();
  EXPECT_EQ(bob->Wait(), 0) << bob->output();
  ASSERT_EQ(coordinator->Wait(), 0) << coordinator->output();
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/state/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[1]["clients_reported"], 2);
  // mallory's refusal, in the line of the first commit after it.
  EXPECT_GE(metrics[0]["handshakes_denied"].get<int>() + metrics[1]["handshakes_denied"].get<int>(),
            1);
  EXPECT_NE(coordinator->output().find("refused a connection from 127.0.0.1"), std::string::npos);
}

TEST_F(SecureFederationTest, SimulatorShardsServeACurveCoordinatorWithOneKeyEach) {
  const std::string sim_config = dir_ + "/sim.yaml";
  std::ofstream(sim_config)
      << "num_clients: 3\nthreads: 1\nlog_level: info\n"
      << "client:\n"
      << "  model: {path: " << kSource << "/assets/models/stories260K/stories260K.bin,"
      << " tokenizer: " << kSource << "/assets/models/stories260K/tok512.bin}\n"
      << "  data: {path: " << kSource << "/assets/datasets/tinyshakespeare/input.txt,"
      << " partition: speaker, partition_seed: 1234, max_eval_windows: 8}\n"
      << "  transport: {reconnect_min_ms: 100, reconnect_max_ms: 500}\n";
  const std::string shard_keys =
      Run({kSim, "keygen", "--config", sim_config, "--shards", "2", "--dir", dir_ + "/keys"});
  EXPECT_NE(shard_keys.find("3 virtual client(s) enrolled"), std::string::npos) << shard_keys;
  const std::string coordinator_key =
      Match(Run({kCoordinator, "keygen", "--dir", dir_ + "/keys"}), R"(public key:\s+(\S+))");
  auto coordinator = std::make_unique<Subprocess>(
      std::vector<std::string>{kCoordinator, "--config", WriteCoordinatorConfig(), "--set",
                               "round.min_clients=3", "--set", "round.quorum=3", "--set",
                               "security.authorized_clients=" + dir_ + "/keys/authorized_clients"},
      dir_ + "/coordinator.log");
  const auto listening = coordinator->WaitFor(R"(coordinator listening on (tcp://[0-9.]+:[0-9]+))");
  ASSERT_TRUE(listening.has_value()) << coordinator->output();
  std::vector<std::unique_ptr<Subprocess>> shards;
  for (int s = 0; s < 2; ++s) {
    shards.push_back(std::make_unique<Subprocess>(
        std::vector<std::string>{
            kSim, "--workers", "--config", sim_config, "--coordinator", (*listening)[1],
            "--shard", std::to_string(s), "--shards", "2", "--out",
            dir_ + "/shard-" + std::to_string(s), "--set",
            "client.security.secret_key_file=" + dir_ + "/keys/shard-{shard}.key_secret",
            "--set", "client.security.coordinator_public_key=\"" + coordinator_key + "\""},
        dir_ + "/shard-" + std::to_string(s) + ".log"));
  }
  for (auto& s : shards) EXPECT_EQ(s->Wait(std::chrono::seconds(400)), 0) << s->output();
  ASSERT_EQ(coordinator->Wait(std::chrono::seconds(400)), 0) << coordinator->output();
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/state/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[1]["clients_reported"], 3);
}

// Secure aggregation between real processes over CURVE: three fedlora-client processes and a
// fedlora-coordinator run three rounds with SecAgg+, and the eval loss falls as in the plain run
// of the same federation (within quantisation error); the coordinator logs each unmasked sum.
TEST_F(SecureFederationTest, ThreeClientProcessesAggregateSecurelyOverCurveLikeThePlainRun) {
  const std::string coordinator_key =
      Match(Run({kCoordinator, "keygen", "--dir", dir_ + "/keys"}), R"(public key:\s+(\S+))");
  const std::vector<std::string> names = {"alice", "bob", "carol"};
  for (const std::string& name : names) {
    Run({kClient, "keygen", "--name", name, "--dir", dir_ + "/keys"});
    Run({kCoordinator, "clients", "add", name, "--key-file", dir_ + "/keys/" + name + ".key",
         "--file", dir_ + "/authorized_clients"});
  }
  const std::string coordinator_config = WriteCoordinatorConfig();
  const std::string client_config = WriteClientConfig(coordinator_key);
  std::map<bool, std::vector<nlohmann::json>> metrics;
  for (const bool secure : {true, false}) {
    const std::string state = dir_ + (secure ? "/secure" : "/plain");
    auto coordinator = std::make_unique<Subprocess>(
        std::vector<std::string>{
            kCoordinator, "--config", coordinator_config, "--set", "state_dir=" + state, "--set",
            "rounds=3", "--set", "round.min_clients=3", "--set", "round.quorum=3", "--set",
            "eval.initial=true", "--set",
            std::string("secure_aggregation.enabled=") + (secure ? "true" : "false")},
        state + ".log");
    const auto listening =
        coordinator->WaitFor(R"(coordinator listening on (tcp://[0-9.]+:[0-9]+))");
    ASSERT_TRUE(listening.has_value()) << coordinator->output();
    std::vector<std::unique_ptr<Subprocess>> clients;
    for (std::size_t i = 0; i < names.size(); ++i) {
      clients.push_back(StartClient(client_config, names[i], static_cast<int>(i), (*listening)[1]));
    }
    for (auto& c : clients) EXPECT_EQ(c->Wait(std::chrono::seconds(400)), 0) << c->output();
    ASSERT_EQ(coordinator->Wait(std::chrono::seconds(400)), 0) << coordinator->output();
    if (secure) {
      EXPECT_NE(coordinator->output().find("security: CURVE"), std::string::npos);
      EXPECT_NE(coordinator->output().find("secure aggregation unmasked the sum of 3 input(s)"),
                std::string::npos)
          << coordinator->output();
    }
    metrics[secure] = testing::ReadJsonLines(state + "/metrics.jsonl");
    ASSERT_EQ(metrics[secure].size(), 4u);
  }
  for (int r = 1; r <= 3; ++r) {
    const nlohmann::json& m = metrics[true][r];
    EXPECT_EQ(m["strategy_metrics"]["secagg_survivors"], 3) << "round " << r;
    EXPECT_NEAR(m["eval_loss"].get<double>(), metrics[false][r]["eval_loss"].get<double>(), 2e-3)
        << "round " << r;
  }
  EXPECT_LT(metrics[true][3]["eval_loss"].get<double>(),
            metrics[true][0]["eval_loss"].get<double>() - 0.05);
}

}  // namespace
}  // namespace fedlora
