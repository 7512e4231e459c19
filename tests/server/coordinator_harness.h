// coordinator_harness.h — a real Coordinator (FedAvg) on its own thread for tests, with the small
// model layout and configuration the coordinator tests share, and helpers to read what it wrote.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"

namespace fedlora::testing {

inline const std::string kDigest(64, 'd');
inline const std::vector<wire::ModuleInfo> kModules = {{"model.layers.0.self_attn.q_proj", 6, 4},
                                                       {"model.layers.0.self_attn.v_proj", 3, 4}};

class CoordinatorHarness : public ::testing::Test {
 protected:
  // dir_ = <temp>/fedlora_<prefix>_<test name>, emptied; config_: one round of rank-2 FedAvg on
  // q and v of kModules, two clients, quorum 1, no evaluation, fast heartbeats.
  void SetUpHarness(const std::string& prefix) {
    dir_ = ::testing::TempDir() + "/fedlora_" + prefix + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    config_.state_dir = dir_;
    config_.rounds = 1;
    config_.base_model_sha256 = kDigest;
    config_.transport.heartbeat_interval_ms = 100;
    config_.transport.heartbeat_liveness = 1000;
    config_.transport.max_message_bytes = 64 << 10;
    config_.transport.chunk_bytes = 32 << 10;
    config_.round.min_clients = 2;
    config_.round.quorum = 1;
    config_.round.timeout_ms = 60000;
    config_.eval.enabled = false;
    config_.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj", "v_proj"}};
  }
  void TearDown() override {
    StopCoordinator();
    std::filesystem::remove_all(dir_);
  }

  // Starts a coordinator with config_ (replacing a stopped one) and runs it on a thread. FedAvg
  // takes config_.strategy's share cap and aggregation rule.
  Status LaunchCoordinator(const Clock& clock) {
    coordinator_.reset();
    server::FedAvgConfig fedavg{.lora = config_.lora,
                                .train = config_.train,
                                .max_weight_share = config_.strategy.max_weight_share,
                                .seed = config_.seed};
    if (config_.strategy.rule.name != "mean") {
      FEDLORA_ASSIGN_OR_RETURN(fedavg.rule, server::MakeAggregationRule(config_.strategy.rule));
    }
    coordinator_ = std::make_unique<server::Coordinator>(
        config_, std::make_unique<server::FedAvg>(std::move(fedavg)), context_, clock);
    const Status started = coordinator_->Start();
    if (started.ok()) thread_ = std::thread([this] { result_ = coordinator_->Run(); });
    return started;
  }
  // Launches on a fresh inproc endpoint named after `prefix`, the test and the launch count
  // (a restarted coordinator binds anew).
  Status LaunchOnInproc(const std::string& prefix, const Clock* clock = nullptr) {
    config_.transport.bind =
        "inproc://coordinator-" + prefix + "-" +
        std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "-" +
        std::to_string(++launches_);
    return LaunchCoordinator(clock != nullptr ? *clock : system_clock_);
  }
  // Waits for Run() to return and gives its status.
  Status FinishCoordinator() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  void StopCoordinator() {
    if (coordinator_) coordinator_->Stop();
    if (thread_.joinable()) thread_.join();
    coordinator_.reset();
  }

  std::vector<std::string> MetricsLines() const {
    std::vector<std::string> lines;
    const std::string text = fs::ReadFile(config_.state_dir + "/metrics.jsonl").value();
    std::size_t start = 0;
    while (start < text.size()) {
      const std::size_t end = text.find('\n', start);
      lines.push_back(text.substr(start, end - start));
      start = end + 1;
    }
    return lines;
  }

  // A well-formed upload for `task`, answering with its ticket: every value of its tensors
  // `shift`ed, or (`constant`) set to `value`.
  static wire::Update Answer(const wire::RoundTask& task, float value, bool constant) {
    wire::Update u;
    u.round = task.round;
    u.ticket = task.ticket;
    u.num_samples = 16;
    u.num_examples = 100;
    u.metrics = {{"train_loss", 2.0}};
    for (const auto& [name, t] : task.tensors) {
      std::vector<double> v = ToDoubles(t);
      for (double& x : v) x = constant ? value : x + value;
      u.tensors[name] = FromDoubles(DType::kF32, t.shape, v);
    }
    return u;
  }

  std::string dir_;
  server::CoordinatorConfig config_;
  net::Context context_;
  SystemClock system_clock_;
  // For tests that drive time: a member, so it outlives the coordinator thread (TearDown stops
  // the coordinator before members die; a test's local clock would die first).
  FakeClock fake_clock_;
  std::unique_ptr<server::Coordinator> coordinator_;
  std::thread thread_;
  Status result_;
  int launches_ = 0;
};

}  // namespace fedlora::testing
