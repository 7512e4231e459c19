// Secure aggregation between a real coordinator and real client sessions (in-process, over
// inproc): the round's aggregate is the mean of the clients' uploads within the quantisation
// bound, the coordinator decodes nothing but masked vectors from them, a client that trains but
// never uploads is unmasked around, and a strategy that is not a weighted sum is refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include "client/session.h"
#include "common/safetensors.h"
#include "common/secagg/secure_input.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"
#include "tests/client/fake_worker.h"
#include "tests/client/hand_driven_coordinator.h"
#include "tests/testing/json_lines.h"

namespace fedlora::client {
namespace {

using testing::FakeWorker;
using testing::kDigest;

// A FakeWorker that keeps a copy of every upload it hands to its session.
class RecordingWorker final : public Worker {
 public:
  RecordingWorker(std::string name, std::mutex& mu, std::vector<Tensor>& uploads)
      : inner_(std::move(name), kDigest), mu_(mu), uploads_(uploads) {}
  wire::Hello Describe() const override { return inner_.Describe(); }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    Result<wire::Update> u = inner_.Train(task, stop);
    if (u.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [name, t] : u->tensors) uploads_.push_back(t);
    }
    return u;
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_.Evaluate(task, stop);
  }

 private:
  FakeWorker inner_;
  std::mutex& mu_;
  std::vector<Tensor>& uploads_;
};

class SecureSessionTest : public fedlora::testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("secagg_session");
    config_.rounds = 2;
    config_.transport.bind =
        StrCat("inproc://secagg-session-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    config_.round.min_clients = 3;
    config_.round.quorum = 2;
    config_.secure_aggregation.enabled = true;
    config_.secure_aggregation.clip = 4;  // FakeWorker's uploads: the initial adapter + 0.25.
    client_config_.coordinator = config_.transport.bind;
    client_config_.transport.reconnect_min_ms = 10;
    client_config_.transport.reconnect_max_ms = 50;
  }

  // A FedAvg coordinator whose every decoded client message is recorded, on its own thread.
  void StartObservedCoordinator() {
    coordinator_ =
        std::make_unique<server::Coordinator>(config_,
                                              std::make_unique<server::FedAvg>(server::FedAvgConfig{
                                                  .lora = config_.lora, .train = config_.train}),
                                              context_, system_clock_);
    coordinator_->SetInboundObserver([this](std::string_view, const wire::Envelope& e) {
      if (const TensorMap* tensors = wire::TensorsOf(e.body)) {
        for (const auto& [name, t] : *tensors) decoded_.emplace_back(name, t);
      }
    });
    const Status started = coordinator_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
    thread_ = std::thread([this] { result_ = coordinator_->Run(); });
  }

  // Runs the named clients to the end of the run; `hold` trains but never uploads.
  void RunClients(const std::vector<std::string>& names, const std::string& hold = "") {
    std::vector<std::unique_ptr<RecordingWorker>> workers;
    std::vector<std::unique_ptr<ClientSession>> sessions;
    std::vector<std::thread> threads;
    for (const std::string& name : names) {
      workers.push_back(std::make_unique<RecordingWorker>(name, mu_, uploads_));
      ClientConfig c = client_config_;
      c.name = name;
      c.faults.hold_update = name == hold;
      sessions.push_back(
          std::make_unique<ClientSession>(c, *workers.back(), context_, system_clock_));
    }
    for (auto& s : sessions) threads.emplace_back([&s] { (void)s->Run(); });
    ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
    for (auto& s : sessions) s->Stop();
    for (auto& t : threads) t.join();
  }

  // The committed global adapter of `round` (its global.safetensors, "adapter." tensors).
  TensorMap Adapter(std::uint64_t round) {
    std::string dir = std::to_string(round);
    dir = dir_ + "/checkpoints/" + std::string(6 - dir.size(), '0') + dir + "/global.safetensors";
    Result<safetensors::File> file = safetensors::Read(dir);
    EXPECT_TRUE(file.ok()) << file.status().ToString();
    TensorMap adapter;
    if (file.ok()) {
      for (auto& [name, t] : file->tensors) {
        if (name.find("lora_") != std::string::npos) adapter.emplace(name, t);
      }
    }
    EXPECT_FALSE(adapter.empty());
    return adapter;
  }

  ClientConfig client_config_;
  std::mutex mu_;
  std::vector<Tensor> uploads_;                          // Guarded by mu_ while clients run.
  std::vector<std::pair<std::string, Tensor>> decoded_;  // The coordinator's thread only.
};

TEST_F(SecureSessionTest, TheCoordinatorDecodesOnlyMaskedVectorsAndAggregatesTheirMean) {
  StartObservedCoordinator();
  RunClients({"alice", "bob", "carol"});
  ASSERT_FALSE(uploads_.empty());
  std::size_t masked = 0;
  for (const auto& [name, t] : decoded_) {
    EXPECT_EQ(name, secagg::kMaskedTensorName);
    EXPECT_EQ(t.dtype, DType::kU32);
    ++masked;
    for (const Tensor& plain : uploads_) {
      EXPECT_NE(t.data, plain.data) << "a client's own upload reached the coordinator";
      EXPECT_FALSE(std::search(t.data.begin(), t.data.end(), plain.data.begin(),
                               plain.data.end()) != t.data.end())
          << "a client's upload is inside a message the coordinator decoded";
    }
  }
  EXPECT_EQ(masked, 6u);  // Three clients, two rounds.
  // Every client uploads its task + 0.25: the global adapter moves by 0.25 a round.
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 3u);
  EXPECT_EQ(metrics[2]["strategy_metrics"]["secagg_survivors"], 3);
  const double bound = metrics[2]["strategy_metrics"]["secagg_error_bound"].get<double>();
  const TensorMap before = Adapter(1), after = Adapter(2);
  for (const auto& [name, t] : after) {
    const std::vector<double> a = ToDoubles(before.at(name)), b = ToDoubles(t);
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_NEAR(b[i], a[i] + 0.25, bound + 1e-6) << name << "[" << i << "]";
    }
  }
}

TEST_F(SecureSessionTest, AClientThatTrainsButNeverUploadsIsUnmaskedAround) {
  config_.rounds = 1;
  config_.round.timeout_ms = 1500;  // The input stage ends here without carol's vector.
  StartObservedCoordinator();
  RunClients({"alice", "bob", "carol"}, /*hold=*/"carol");
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 2u);
  const nlohmann::json& m = metrics[1]["strategy_metrics"];
  EXPECT_EQ(m["secagg_shared"], 3);
  EXPECT_EQ(m["secagg_survivors"], 2);
  EXPECT_EQ(m["secagg_dropped"], 1);
  const double bound = m["secagg_error_bound"].get<double>();
  const TensorMap before = Adapter(0), after = Adapter(1);
  for (const auto& [name, t] : after) {
    const std::vector<double> a = ToDoubles(before.at(name)), b = ToDoubles(t);
    for (std::size_t i = 0; i < a.size(); ++i) {
      // Carol's pairwise masks are gone: a leftover mask would be uniform noise in [0, 2^32).
      EXPECT_NEAR(b[i], a[i] + 0.25, bound + 1e-6) << name << "[" << i << "]";
    }
  }
}

// A worker whose first training waits until it is superseded (and then gives up); later ones
// return at once. Counts the trainings it started.
class StallsFirstWorker final : public Worker {
 public:
  explicit StallsFirstWorker(std::string name) : inner_(std::move(name), kDigest) {}
  wire::Hello Describe() const override { return inner_.Describe(); }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    if (started++ == 0) {
      while (!stop.stop_requested()) std::this_thread::yield();
      return Status(StatusCode::kCancelled, "superseded");
    }
    return inner_.Train(task, stop);
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_.Evaluate(task, stop);
  }
  std::atomic<int> started{0};

 private:
  FakeWorker inner_;
};

// A coordinator restarted in the middle of a secure round keeps nothing of the attempt (no upload
// or partial transfer in its state directory) and runs the round's protocol again from the start
// with fresh keys; the clients, superseded, follow.
TEST_F(SecureSessionTest, ARestartMidProtocolRunsTheRoundsProtocolAgainAndLeavesNothingBehind) {
  config_.rounds = 1;
  config_.transport.heartbeat_liveness = 5;  // Clients notice the restart within 0.5 s.
  StartObservedCoordinator();
  std::vector<std::unique_ptr<StallsFirstWorker>> workers;
  std::vector<std::unique_ptr<ClientSession>> sessions;
  std::vector<std::thread> threads;
  for (const std::string name : {"alice", "bob", "carol"}) {
    workers.push_back(std::make_unique<StallsFirstWorker>(name));
    ClientConfig c = client_config_;
    c.name = name;
    sessions.push_back(
        std::make_unique<ClientSession>(c, *workers.back(), context_, system_clock_));
  }
  for (auto& s : sessions) threads.emplace_back([&s] { (void)s->Run(); });
  // Every client holds its task and trains: the attempt is under way.
  while (std::any_of(workers.begin(), workers.end(), [](auto& w) { return w->started == 0; })) {
    std::this_thread::yield();
  }
  StopCoordinator();
  for (const char* dir : {"/pending", "/incoming"}) {
    std::size_t files = 0;
    if (std::filesystem::exists(dir_ + dir)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(dir_ + dir)) {
        files += e.is_regular_file() ? 1 : 0;
      }
    }
    EXPECT_EQ(files, 0u) << dir;
  }
  decoded_.clear();
  StartObservedCoordinator();  // Same state directory and endpoint: round 1 starts again.
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  for (auto& s : sessions) s->Stop();
  for (auto& t : threads) t.join();
  const std::vector<nlohmann::json> metrics = testing::ReadJsonLines(dir_ + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[1]["strategy_metrics"]["secagg_survivors"], 3);
  for (auto& w : workers) EXPECT_EQ(w->started, 2);  // Superseded once, then trained.
}

TEST_F(SecureSessionTest, AStrategyThatIsNotAWeightedSumIsRefusedAtStartSayingWhich) {
  config_.strategy.rule.name = "median";
  const Status started = LaunchCoordinator(system_clock_);
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.message().find("secure_aggregation needs a strategy"), std::string::npos)
      << started.message();
  EXPECT_NE(started.message().find("fedavg, ffa, fedsvd, fedsa, fedsb, fslora"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::client

namespace fedlora::client {
namespace {

// A worker whose round-1 training waits until it is superseded and returns its update anyway (a
// job that finished just as a newer task arrived); other rounds return at once.
class FinishesAnywayWorker final : public Worker {
 public:
  wire::Hello Describe() const override { return FakeWorker("w", kDigest).Describe(); }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    if (task.round == 1) {
      started.set_value();
      while (!stop.stop_requested()) std::this_thread::yield();
    }
    wire::Update u{task.round, 4, 10, {{"train_loss", 1.5}}, {}};
    u.tensors["m.lora_A.weight"] = MakeF32({1, 2}, std::vector<float>{0.5f, 0.25f});
    return u;
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token) override {
    return wire::EvalResult{task.round, 1.0, 1, 1, {}};
  }
  std::promise<void> started;
};

// An update trained for a secure round whose attempt is over never travels in clear: the client
// drops it. The coordinator here is a hand-driven ROUTER; the plain task of round 3 that follows
// is the marker (completions are handled in order).
TEST(SecureSessionOrderTest, AnUpdateOfAnAttemptThatIsOverIsNeverSentUnmasked) {
  net::Context context;
  SystemClock clock;
  const std::string endpoint = "inproc://secagg-session-over";
  testing::HandDrivenCoordinator coordinator(context, endpoint);
  FinishesAnywayWorker worker;
  ClientConfig c;
  c.name = "w";
  c.coordinator = endpoint;
  ClientSession session(c, worker, context, clock);
  Status result;
  std::thread t([&] { result = session.Run(); });
  auto [route, hello] = coordinator.Receive();
  ASSERT_TRUE(std::holds_alternative<wire::Hello>(hello.body));
  coordinator.Send(route, 5, wire::Welcome{"w", 60000, 100, 1, "fedavg", {}});
  wire::RoundTask task;
  task.round = 1;
  task.ticket = {1, {1}};
  task.secagg = wire::SecAggParams{
      1.0, 16, 32, wire::SecAggWeighting::kUniform, 1, false, {{"m.lora_A.weight", {1, 2}}}};
  coordinator.Send(route, 5, task);
  worker.started.get_future().wait();  // Round 1 trains.
  task.round = 2;                      // Supersedes round 1's training, which finishes anyway.
  task.ticket = {1, {2}};
  coordinator.Send(route, 5, task);
  task.round = 3;  // Plain: its update is sent as it is.
  task.ticket = {1, {3}};
  task.secagg.reset();
  coordinator.Send(route, 5, task);
  std::vector<std::uint64_t> keys_for;
  while (true) {
    const wire::Envelope e = coordinator.Receive().second;
    if (const auto* keys = std::get_if<wire::SecAgg>(&e.body)) keys_for.push_back(keys->round);
    if (const auto* u = std::get_if<wire::Update>(&e.body)) {
      ASSERT_EQ(u->round, 3u) << "the update of secure round " << u->round << " was sent";
      break;
    }
  }
  EXPECT_EQ(keys_for, (std::vector<std::uint64_t>{1, 2}));
  session.Stop();
  t.join();
}

}  // namespace
}  // namespace fedlora::client
