#include "client/session.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "server/coordinator.h"
#include "server/strategies/fedavg.h"

namespace fedlora::client {
namespace {

const std::string kDigest(64, 'd');
const std::vector<wire::ModuleInfo> kModules = {{"model.layers.0.self_attn.q_proj", 6, 4},
                                                {"model.layers.0.self_attn.v_proj", 3, 4}};

// A worker without a model: returns the task's tensors nudged, and counts its calls.
class FakeWorker final : public Worker {
 public:
  FakeWorker(std::string name, std::string digest) {
    hello_.client_name = std::move(name);
    hello_.base_model_sha256 = std::move(digest);
    hello_.capabilities = {"cpu", 1 << 20, 0, 10, 1.0};
    hello_.modules = kModules;
  }
  wire::Hello Describe() const override { return hello_; }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token) override {
    ++trains;
    wire::Update u{task.round, 4, 10, {{"train_loss", 1.5}}, {}};
    for (const auto& [name, t] : task.tensors) {
      std::vector<double> v = ToDoubles(t);
      for (double& x : v) x += 0.25;
      u.tensors[name] = FromDoubles(task.train.upload_dtype, t.shape, v);
    }
    return u;
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token) override {
    ++evals;
    return wire::EvalResult{task.round, 1.25, 100, 2, {}};
  }
  std::atomic<int> trains{0};
  std::atomic<int> evals{0};

 private:
  wire::Hello hello_;
};

class ClientSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = ::testing::TempDir() + "/fedlora_session_" + name;
    std::filesystem::remove_all(dir_);
    coordinator_config_.state_dir = dir_;
    coordinator_config_.rounds = 2;
    coordinator_config_.base_model_sha256 = kDigest;
    coordinator_config_.transport.bind = "inproc://session-test-" + name;
    coordinator_config_.transport.heartbeat_interval_ms = 50;
    coordinator_config_.transport.heartbeat_liveness = 100;
    coordinator_config_.round.min_clients = 2;
    coordinator_config_.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj", "v_proj"}};
    client_config_.coordinator = coordinator_config_.transport.bind;
    client_config_.transport.reconnect_min_ms = 10;
    client_config_.transport.reconnect_max_ms = 50;
  }
  void TearDown() override {
    if (coordinator_) coordinator_->Stop();
    if (coordinator_thread_.joinable()) coordinator_thread_.join();
    std::filesystem::remove_all(dir_);
  }
  void StartCoordinator() {
    coordinator_ = std::make_unique<server::Coordinator>(
        coordinator_config_,
        std::make_unique<server::FedAvg>(server::FedAvgConfig{.lora = coordinator_config_.lora}),
        context_, clock_);
    ASSERT_TRUE(coordinator_->Start().ok());
    coordinator_thread_ = std::thread([this] { coordinator_result_ = coordinator_->Run(); });
  }

  std::string dir_;
  server::CoordinatorConfig coordinator_config_;
  ClientConfig client_config_;
  net::Context context_;
  SystemClock clock_;
  std::unique_ptr<server::Coordinator> coordinator_;
  std::thread coordinator_thread_;
  Status coordinator_result_;
};

TEST_F(ClientSessionTest, TrainsAndEvaluatesEveryRoundThenEndsOnBye) {
  StartCoordinator();
  FakeWorker alice("alice", kDigest), bob("bob", kDigest);
  ClientConfig a = client_config_, b = client_config_;
  a.name = "alice";
  b.name = "bob";
  ClientSession sa(a, alice, context_, clock_), sb(b, bob, context_, clock_);
  Status ra, rb;
  std::thread ta([&] { ra = sa.Run(); });
  std::thread tb([&] { rb = sb.Run(); });
  ta.join();
  tb.join();
  coordinator_thread_.join();
  EXPECT_TRUE(ra.ok()) << ra.ToString();
  EXPECT_TRUE(rb.ok()) << rb.ToString();
  EXPECT_TRUE(coordinator_result_.ok()) << coordinator_result_.ToString();
  EXPECT_EQ(alice.trains.load(), 2);  // Rounds 1 and 2.
  EXPECT_EQ(alice.evals.load(), 3);   // Rounds 0, 1 and 2.
  EXPECT_EQ(coordinator_->counters().updates_accepted, 4u);
}

TEST_F(ClientSessionTest, RefusalForAnotherBaseModelEndsTheSessionWithFailedPrecondition) {
  StartCoordinator();
  FakeWorker stranger("stranger", std::string(64, 'e'));
  ClientConfig c = client_config_;
  c.name = "stranger";
  ClientSession session(c, stranger, context_, clock_);
  const Status s = session.Run();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("BASE_MODEL_MISMATCH"), std::string::npos);
}

TEST_F(ClientSessionTest, GivesUpAfterMaxConnectAttemptsWithoutACoordinator) {
  FakeWorker w("lonely", kDigest);
  ClientConfig c = client_config_;
  c.name = "lonely";
  c.coordinator = "inproc://nobody-listens-here";
  c.transport.hello_timeout_ms = 20;
  c.transport.max_connect_attempts = 3;
  ClientSession session(c, w, context_, clock_);
  EXPECT_EQ(session.Run().code(), StatusCode::kUnavailable);
}

TEST_F(ClientSessionTest, StopFromAnotherThreadEndsRunWithCancelled) {
  coordinator_config_.round.min_clients = 2;  // One client: round 1 never starts.
  StartCoordinator();
  FakeWorker w("waiter", kDigest);
  ClientConfig c = client_config_;
  c.name = "waiter";
  ClientSession session(c, w, context_, clock_);
  Status result;
  std::thread t([&] { result = session.Run(); });
  session.Stop();
  t.join();
  EXPECT_EQ(result.code(), StatusCode::kCancelled);
}

}  // namespace
}  // namespace fedlora::client
