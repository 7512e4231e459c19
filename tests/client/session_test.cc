#include "client/session.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <thread>
#include <tuple>

#include "common/wire/codec.h"

#include "server/coordinator.h"
#include "server/strategies/fedavg.h"
#include "tests/client/fake_worker.h"
#include "tests/client/hand_driven_coordinator.h"

namespace fedlora::client {
namespace {

using testing::FakeWorker;
using testing::HandDrivenCoordinator;
using testing::kDigest;

class ClientSessionTest : public fedlora::testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("session");
    config_.rounds = 2;
    config_.transport.bind = StrCat("inproc://session-test-",
                                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
    config_.transport.heartbeat_interval_ms = 50;
    config_.transport.heartbeat_liveness = 100;
    config_.eval = server::EvalConfig{};  // Every round evaluated, round 0 included.
    client_config_.coordinator = config_.transport.bind;
    client_config_.transport.reconnect_min_ms = 10;
    client_config_.transport.reconnect_max_ms = 50;
  }
  void StartCoordinator() {
    const Status started = LaunchCoordinator(system_clock_);
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  ClientConfig client_config_;
};

TEST_F(ClientSessionTest, TrainsAndEvaluatesEveryRoundThenEndsOnBye) {
  StartCoordinator();
  FakeWorker alice("alice", kDigest), bob("bob", kDigest);
  ClientConfig a = client_config_, b = client_config_;
  a.name = "alice";
  b.name = "bob";
  ClientSession sa(a, alice, context_, system_clock_), sb(b, bob, context_, system_clock_);
  Status ra, rb;
  std::thread ta([&] { ra = sa.Run(); });
  std::thread tb([&] { rb = sb.Run(); });
  ta.join();
  tb.join();
  (void)FinishCoordinator();
  EXPECT_TRUE(ra.ok()) << ra.ToString();
  EXPECT_TRUE(rb.ok()) << rb.ToString();
  EXPECT_TRUE(result_.ok()) << result_.ToString();
  EXPECT_EQ(alice.trains.load(), 2);  // Rounds 1 and 2.
  EXPECT_EQ(alice.evals.load(), 3);   // Rounds 0, 1 and 2.
  EXPECT_EQ(coordinator_->counters().updates_accepted, 4u);
}

// The upload (rank 4 on 64 x 512 and 32 x 512: 17920 bytes) goes out in 4096-byte chunks, the
// first time with two chunks swapped as a reordering network would: the coordinator refuses that
// transfer (CHUNK_MISMATCH), the client sends the upload again, and the round commits with it.
TEST_F(ClientSessionTest, AnUploadWhoseChunksArriveOutOfOrderIsSentAgainAndAccepted) {
  config_.rounds = 1;
  config_.round.min_clients = 1;
  config_.eval.enabled = false;
  config_.lora.rank = 4;
  config_.transport.chunk_bytes = 4096;
  StartCoordinator();
  FakeWorker alice("alice", kDigest,
                   {{"model.layers.0.self_attn.q_proj", 64, 512},
                    {"model.layers.0.self_attn.v_proj", 32, 512}});
  ClientConfig a = client_config_;
  a.name = "alice";
  a.transport.chunk_bytes = 4096;
  a.faults.swap_upload_chunks = 1;
  ClientSession session(a, alice, context_, system_clock_);
  const Status run = session.Run();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_TRUE(run.ok()) << run.ToString();
  const server::CoordinatorCounters c = coordinator_->counters();
  EXPECT_EQ(c.transfers_voided, 1u);
  EXPECT_EQ(c.updates_accepted, 1u);
  EXPECT_EQ(c.chunks_in, 10u);  // Five of the refused transfer, five of the one accepted.
  EXPECT_EQ(alice.trains.load(), 1) << "sent again, not trained again";
}

TEST_F(ClientSessionTest, RefusalForAnotherBaseModelEndsTheSessionWithFailedPrecondition) {
  StartCoordinator();
  FakeWorker stranger("stranger", std::string(64, 'e'));
  ClientConfig c = client_config_;
  c.name = "stranger";
  ClientSession session(c, stranger, context_, system_clock_);
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
  ClientSession session(c, w, context_, system_clock_);
  EXPECT_EQ(session.Run().code(), StatusCode::kUnavailable);
}

TEST_F(ClientSessionTest, StopFromAnotherThreadEndsRunWithCancelled) {
  config_.round.min_clients = 2;  // One client: round 1 never starts.
  StartCoordinator();
  FakeWorker w("waiter", kDigest);
  ClientConfig c = client_config_;
  c.name = "waiter";
  ClientSession session(c, w, context_, system_clock_);
  Status result;
  std::thread t([&] { result = session.Run(); });
  session.Stop();
  t.join();
  EXPECT_EQ(result.code(), StatusCode::kCancelled);
}

// A worker whose first training blocks until it is cancelled; later ones return at once.
class FirstTrainingBlocksWorker final : public Worker {
 public:
  wire::Hello Describe() const override { return FakeWorker("w", kDigest).Describe(); }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override {
    if (calls_++ == 0) {
      started.set_value();
      while (!stop.stop_requested()) std::this_thread::yield();
      first_cancelled = true;
      return Status(StatusCode::kCancelled, "superseded");
    }
    return wire::Update{task.round, 4, 10, {{"train_loss", 1.5}}, {}};
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token) override {
    return wire::EvalResult{task.round, 1.0, 1, 1, {}};
  }
  std::promise<void> started;
  std::atomic<bool> first_cancelled{false};

 private:
  std::atomic<int> calls_{0};
};

// A retry of the round (a new ticket) arriving while the client still trains the earlier task:
// the client drops that work and answers the new task with its ticket, which is the only one the
// coordinator would accept. The coordinator here is a hand-driven ROUTER.
TEST_F(ClientSessionTest, ANewTicketForTheRoundSupersedesTheTaskInHand) {
  HandDrivenCoordinator coordinator(context_, "inproc://session-test-supersede");
  FirstTrainingBlocksWorker worker;
  ClientConfig c = client_config_;
  c.name = "w";
  c.coordinator = "inproc://session-test-supersede";
  ClientSession session(c, worker, context_, system_clock_);
  Status result;
  std::thread t([&] { result = session.Run(); });

  auto [route, hello] = coordinator.Receive();
  ASSERT_TRUE(std::holds_alternative<wire::Hello>(hello.body));
  coordinator.Send(route, 77, wire::Welcome{"w", 60000, 100, 1, "fedavg", {}});
  wire::RoundTask first;
  first.round = 1;
  first.ticket = {1, {1}};
  coordinator.Send(route, 77, first);
  worker.started.get_future().wait();
  wire::RoundTask retry = first;
  retry.ticket = {2, {2}};
  coordinator.Send(route, 77, retry);
  wire::Envelope answer = coordinator.Receive().second;
  while (!std::holds_alternative<wire::Update>(answer.body)) answer = coordinator.Receive().second;
  EXPECT_EQ(std::get<wire::Update>(answer.body).ticket, retry.ticket);
  EXPECT_TRUE(worker.first_cancelled.load());
  session.Stop();
  t.join();
  EXPECT_EQ(result.code(), StatusCode::kCancelled);
}

// A coordinator that no longer knows our session answers outside any session (session id 0) with
// SESSION_MISMATCH: the client says Hello again at once, on a new connection, instead of waiting
// out interval x liveness of silence. The coordinator here is a hand-driven ROUTER.
TEST_F(ClientSessionTest, SessionMismatchOutsideTheSessionMakesTheClientSayHelloAgainAtOnce) {
  HandDrivenCoordinator coordinator(context_, "inproc://session-test-mismatch");
  FakeWorker worker("w", kDigest);
  ClientConfig c = client_config_;
  c.name = "w";
  c.coordinator = "inproc://session-test-mismatch";
  ClientSession session(c, worker, context_, system_clock_);
  Status result;
  std::thread t([&] { result = session.Run(); });

  auto [route, hello] = coordinator.Receive();
  ASSERT_TRUE(std::holds_alternative<wire::Hello>(hello.body));
  // Liveness of an hour: only the error can make the client reconnect within the test.
  coordinator.Send(route, 77, wire::Welcome{"w", 60000, 60, 1, "fedavg", {}});
  coordinator.Send(route, 0,
                   wire::Error{wire::ErrorCode::kSessionMismatch, "session 77 has ended", 1});
  auto [second_route, again] = coordinator.Receive();
  while (!std::holds_alternative<wire::Hello>(again.body)) {
    std::tie(second_route, again) = coordinator.Receive();
  }
  EXPECT_NE(second_route, route);  // A new connection.
  session.Stop();
  t.join();
  EXPECT_EQ(result.code(), StatusCode::kCancelled);
}

}  // namespace
}  // namespace fedlora::client
