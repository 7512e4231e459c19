#include "server/coordinator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "common/fs.h"
#include "server/checkpoint_store.h"
#include "server/strategies/fedavg.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"

namespace fedlora::server {
namespace {

using testing::MakeHello;
using testing::TestPeer;
using wire::ErrorCode;

using testing::kDigest;
using testing::kModules;

class CoordinatorTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("coord");
    bind_base_ = "inproc://coordinator-test-" +
                 std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  void StartCoordinator(const Clock& clock) {
    // ZeroMQ releases an inproc name asynchronously after its socket closes, so a restarted
    // coordinator in the same context binds a fresh name; its peers connect to endpoint().
    config_.transport.bind = bind_base_ + "-" + std::to_string(++starts_);
    const Status started = LaunchCoordinator(clock);
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  // A well-formed upload for `task`: its own tensors, nudged.
  static wire::Update UpdateFor(const wire::RoundTask& task, float delta = 0.5f) {
    return Answer(task, delta, /*constant=*/false);
  }

  // Moves `clock` past heartbeat_interval_ms x heartbeat_liveness and waits (bounded) until the
  // coordinator has dropped its one silent client.
  void ExpireTheSilentOne(FakeClock& clock) {
    clock.Advance(std::chrono::milliseconds(config_.transport.heartbeat_interval_ms *
                                            config_.transport.heartbeat_liveness + 1));
    coordinator_->Wake();
    for (int i = 0; i < 3000 && coordinator_->counters().clients_expired == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // Bounded wait for the expiry.
    }
    ASSERT_EQ(coordinator_->counters().clients_expired, 1u);
  }

  std::string bind_base_;
  int starts_ = 0;
};

TEST_F(CoordinatorTest, MalformedInputsGetTheirOwnErrorCodesWhileOthersAreServed) {
  StartCoordinator(system_clock_);
  const std::string endpoint = coordinator_->endpoint();
  TestPeer good(context_, endpoint);
  TestPeer bad(context_, endpoint);
  good.Join(MakeHello("good", kDigest, kModules));
  bad.Join(MakeHello("bad", kDigest, kModules));
  const wire::RoundTask good_task = good.Expect<wire::RoundTask>();
  const wire::RoundTask bad_task = bad.Expect<wire::RoundTask>();
  ASSERT_EQ(good_task.round, 1u);
  ASSERT_EQ(good_task.tensors.size(), 4u);

  // Truncated envelope.
  auto frames = bad.Frames(wire::Heartbeat{});
  frames[0].resize(frames[0].size() - 8);
  bad.SendFrames(frames);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kMalformedEnvelope);
  // Wrong frame count.
  frames = bad.Frames(UpdateFor(bad_task));
  frames.pop_back();
  bad.SendFrames(frames);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kFrameCountMismatch);
  // Tensor bytes that do not match their digest.
  frames = bad.Frames(UpdateFor(bad_task));
  frames[1][0] ^= std::byte{1};
  bad.SendFrames(frames);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kDigestMismatch);
  // Unknown message kind.
  const wire::EncodedMessage unknown = wire::EncodeWithUnknownKindForTesting(
      wire::Envelope{wire::kProtocolVersion, bad.session(), bad.sequence() + 1, wire::Heartbeat{}},
      77);
  bad.SendFrames(TestPeer::Copy(unknown));
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kUnknownMessageKind);
  // Wrong protocol version.
  bad.Send(wire::Heartbeat{}, wire::kProtocolVersion + 1);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kVersionMismatch);
  // Oversize: two 40 KiB frames, each under the transport's frame limit, together over 64 KiB.
  wire::Update big = UpdateFor(bad_task);
  big.tensors["x.a"] = Zeros(DType::kF32, {10240});
  big.tensors["x.b"] = Zeros(DType::kF32, {10240});
  bad.Send(big);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kMessageTooLarge);
  // Replayed sequence number and foreign session.
  bad.SendEnvelope(wire::Envelope{wire::kProtocolVersion, bad.session(), 1, wire::Heartbeat{}});
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kSequenceReplay);
  bad.SendEnvelope(
      wire::Envelope{wire::kProtocolVersion, bad.session() + 1, 1000, wire::Heartbeat{}});
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kSessionMismatch);
  // Upload for a round that is not open.
  wire::Update stale = UpdateFor(bad_task);
  stale.round = 99;
  bad.Send(stale);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kStaleRound);
  // Non-finite values.
  wire::Update nan = UpdateFor(bad_task);
  nan.tensors.begin()->second = FromDoubles(DType::kF32, nan.tensors.begin()->second.shape,
                                            std::vector<double>(8, std::nan("")));
  bad.Send(nan);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kNonFiniteTensor);
  // Wrong dtype, then wrong shape, for a tensor the task asked for.
  wire::Update f16 = UpdateFor(bad_task);
  for (auto& [name, t] : f16.tensors) t = FromDoubles(DType::kF16, t.shape, ToDoubles(t));
  bad.Send(f16);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kTensorDtypeMismatch);
  wire::Update shape = UpdateFor(bad_task);
  shape.tensors.begin()->second = Zeros(DType::kF32, {2, 5});
  bad.Send(shape);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kTensorShapeMismatch);
  // A client of another base model, and a peer that skips Hello.
  TestPeer stranger(context_, endpoint);
  stranger.Send(MakeHello("stranger", std::string(64, 'e'), kModules));
  EXPECT_EQ(stranger.ExpectError(), ErrorCode::kBaseModelMismatch);
  TestPeer rude(context_, endpoint);
  rude.Send(wire::Heartbeat{});
  EXPECT_EQ(rude.ExpectError(), ErrorCode::kUnexpectedMessage);

  // Through all of that the good client is served normally.
  const std::uint64_t sequence = good.Send(UpdateFor(good_task));
  const wire::Ack ack = good.Expect<wire::Ack>();
  EXPECT_EQ(ack.round, 1u);
  EXPECT_EQ(ack.acked_sequence, sequence);
  good.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_EQ(coordinator_->counters().protocol_errors, 14u);
  EXPECT_EQ(coordinator_->counters().updates_accepted, 1u);

  const std::vector<std::string> lines = MetricsLines();
  ASSERT_EQ(lines.size(), 2u);  // Rounds 0 and 1.
  EXPECT_NE(lines[1].find("\"clients_selected\":2"), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find("\"clients_reported\":1"), std::string::npos);
  EXPECT_NE(lines[1].find("\"clients_failed\":1"), std::string::npos);
}

TEST_F(CoordinatorTest, ClientThatMissesTheDeadlineIsCountedAsFailed) {
  FakeClock& clock = fake_clock_;
  config_.round.timeout_ms = 5000;
  StartCoordinator(clock);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  b.Expect<wire::RoundTask>();
  a.Send(UpdateFor(task));
  a.Expect<wire::Ack>();
  clock.Advance(std::chrono::seconds(6));
  coordinator_->Wake();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":1"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"clients_failed\":1"), std::string::npos) << round1;
}

TEST_F(CoordinatorTest, RoundBelowQuorumAtTheDeadlineIsRetried) {
  FakeClock& clock = fake_clock_;
  config_.round.quorum = 2;
  config_.round.timeout_ms = 5000;
  StartCoordinator(clock);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  b.Expect<wire::RoundTask>();
  a.Send(UpdateFor(task));
  a.Expect<wire::Ack>();
  clock.Advance(std::chrono::seconds(6));  // b misses the deadline: 1 of 2 updates.
  coordinator_->Wake();
  const wire::RoundTask retry = b.Expect<wire::RoundTask>();  // Asked again, same round.
  EXPECT_EQ(retry.round, 1u);
  b.Send(UpdateFor(retry, -0.5f));
  b.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":2"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"attempts\":2"), std::string::npos) << round1;
}

// A client that declines (offline, or too slow for the deadline) is failed at once: the round
// aggregates without waiting for the deadline (the clock never moves here).
TEST_F(CoordinatorTest, ADeclinedTaskCountsAsFailedWithoutWaitingForTheDeadline) {
  FakeClock& clock = fake_clock_;
  StartCoordinator(clock);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::Envelope task_env = b.Next();
  ASSERT_TRUE(std::holds_alternative<wire::RoundTask>(task_env.body));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  b.Send(wire::Error{ErrorCode::kTaskDeclined, "offline in round 1", task_env.sequence});
  a.Send(UpdateFor(task));
  a.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":1"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"clients_failed\":1"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"attempts\":1"), std::string::npos) << round1;
}

// round.wait_for_clients holds the first round until that many clients are live, although
// min_clients (2) were there earlier; then it selects from all of them (fraction 1).
TEST_F(CoordinatorTest, TheFirstRoundWaitsForWaitForClientsLiveClients) {
  config_.round.wait_for_clients = 3;
  StartCoordinator(system_clock_);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  // Two clients are live (both welcomed) and min_clients is 2: had the round started now, it
  // would have selected only them (clients_selected 2 below).
  TestPeer c(context_, coordinator_->endpoint());
  c.Join(MakeHello("c", kDigest, kModules));
  const wire::RoundTask ta = a.Expect<wire::RoundTask>();
  const wire::RoundTask tb = b.Expect<wire::RoundTask>();
  const wire::RoundTask tc = c.Expect<wire::RoundTask>();
  EXPECT_EQ(ta.round, 1u);
  EXPECT_EQ(tc.round, 1u);
  a.Send(UpdateFor(ta));
  b.Send(UpdateFor(tb));
  c.Send(UpdateFor(tc));
  a.Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_NE(MetricsLines().at(1).find("\"clients_selected\":3"), std::string::npos);
}

TEST_F(CoordinatorTest, AcknowledgedUploadSurvivesACoordinatorRestart) {
  config_.round.quorum = 2;
  StartCoordinator(system_clock_);
  {
    TestPeer a(context_, coordinator_->endpoint());
    TestPeer b(context_, coordinator_->endpoint());
    a.Join(MakeHello("a", kDigest, kModules));
    b.Join(MakeHello("b", kDigest, kModules));
    const wire::RoundTask task = a.Expect<wire::RoundTask>();
    a.Send(UpdateFor(task));
    a.Expect<wire::Ack>();
    coordinator_->Stop();
    EXPECT_EQ(a.ExpectError(), ErrorCode::kShuttingDown);
    EXPECT_EQ(FinishCoordinator().code(), StatusCode::kCancelled);
    coordinator_.reset();
  }
  StartCoordinator(system_clock_);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  EXPECT_EQ(a.Join(MakeHello("a", kDigest, kModules)).current_round, 1u);
  b.Join(MakeHello("b", kDigest, kModules));
  // Only b is asked: a's upload from before the restart still counts.
  const wire::RoundTask task = b.Expect<wire::RoundTask>();
  b.Send(UpdateFor(task, -0.5f));
  b.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":2"), std::string::npos) << round1;
  // Distinct clients of the round: a (restored) and b.
  EXPECT_NE(round1.find("\"clients_selected\":2"), std::string::npos) << round1;
}

TEST_F(CoordinatorTest, RestartWithTheSameStateDirContinuesAtTheNextRound) {
  StartCoordinator(system_clock_);
  {
    TestPeer a(context_, coordinator_->endpoint());
    TestPeer b(context_, coordinator_->endpoint());
    a.Join(MakeHello("a", kDigest, kModules));
    b.Join(MakeHello("b", kDigest, kModules));
    a.Send(UpdateFor(a.Expect<wire::RoundTask>()));
    b.Send(UpdateFor(b.Expect<wire::RoundTask>()));
    a.Expect<wire::Ack>();
    a.Expect<wire::Bye>();
    ASSERT_TRUE(FinishCoordinator().ok());
    coordinator_.reset();
  }
  const TensorMap after_round1 =
      CheckpointStore::Open(dir_).value().LoadLatest().value()->state.adapter;
  config_.rounds = 2;
  StartCoordinator(system_clock_);
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  EXPECT_EQ(a.Join(MakeHello("a", kDigest, kModules)).current_round, 2u);
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  EXPECT_EQ(task.round, 2u);
  EXPECT_EQ(task.tensors, after_round1);  // Starts from the committed global adapter.
  a.Send(UpdateFor(task));
  b.Send(UpdateFor(b.Expect<wire::RoundTask>()));
  a.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::vector<std::string> lines = MetricsLines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_NE(lines[2].find("\"round\":2"), std::string::npos);
}

TEST_F(CoordinatorTest, SecondLiveConnectionWithTheSameNameIsRefused) {
  StartCoordinator(system_clock_);
  TestPeer first(context_, coordinator_->endpoint());
  first.Join(MakeHello("alice", kDigest, kModules));
  TestPeer second(context_, coordinator_->endpoint());
  second.Send(MakeHello("alice", kDigest, kModules));
  EXPECT_EQ(second.ExpectError(), ErrorCode::kDuplicateClient);
  TestPeer odd(context_, coordinator_->endpoint());
  odd.Send(MakeHello("../etc", kDigest, kModules));
  EXPECT_EQ(odd.ExpectError(), ErrorCode::kInvalidField);
}

TEST_F(CoordinatorTest, StateOfAnotherStrategyOrLoraShapeIsRefusedAtStart) {
  {
    CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
    Checkpoint cp;
    cp.strategy = "fedavg";
    cp.layout = {kDigest, kModules};
    cp.lora = {.rank = 16, .alpha = 4, .targets = {"q_proj", "v_proj"}};
    ASSERT_TRUE(store.Commit(cp).ok());
  }
  config_.transport.bind = bind_base_;
  Coordinator coordinator(config_, std::make_unique<FedAvg>(FedAvgConfig{.lora = config_.lora}),
                          context_, system_clock_);
  const Status s = coordinator.Start();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("rank 16"), std::string::npos) << s.message();
}

TEST_F(CoordinatorTest, SelectedClientThatLeftAndReturnsGetsItsTaskAgain) {
  StartCoordinator(system_clock_);
  TestPeer a(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  {
    TestPeer b(context_, coordinator_->endpoint());
    b.Join(MakeHello("b", kDigest, kModules));
    b.Expect<wire::RoundTask>();
    b.Send(wire::Bye{"restarting"});  // Counted as failed in round 1...
  }
  TestPeer b(context_, coordinator_->endpoint());
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask again = b.Expect<wire::RoundTask>();  // ...but asked again on return.
  EXPECT_EQ(again.round, 1u);
  a.Send(UpdateFor(a.Expect<wire::RoundTask>()));
  b.Send(UpdateFor(again));
  a.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_NE(MetricsLines().at(1).find("\"clients_reported\":2"), std::string::npos);
}

TEST_F(CoordinatorTest, ModelWithoutTheConfiguredTargetsIsRefusedAndTheFederationGoesOn) {
  config_.round.min_clients = 1;
  StartCoordinator(system_clock_);
  TestPeer odd(context_, coordinator_->endpoint());
  odd.Send(MakeHello("odd", kDigest, {{"model.layers.0.mlp.up_proj", 8, 4}}));
  EXPECT_EQ(odd.ExpectError(), ErrorCode::kBaseModelMismatch);
  TestPeer good(context_, coordinator_->endpoint());
  good.Join(MakeHello("good", kDigest, kModules));
  good.Send(UpdateFor(good.Expect<wire::RoundTask>()));
  good.Expect<wire::Ack>();
  good.Expect<wire::Bye>();
  EXPECT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

TEST_F(CoordinatorTest, HostileNamesAreRefusedWithoutHarm) {
  StartCoordinator(system_clock_);
  TestPeer good(context_, coordinator_->endpoint());
  TestPeer bad(context_, coordinator_->endpoint());
  TestPeer worse(context_, coordinator_->endpoint());
  worse.Send(MakeHello("worse", kDigest, {{"model.layers.0.self_attn.q_proj\xff", 6, 4}}));
  EXPECT_EQ(worse.ExpectError(), ErrorCode::kInvalidField);
  TestPeer huge(context_, coordinator_->endpoint());
  huge.Send(MakeHello("huge", kDigest, {{"model.layers.0.self_attn.q_proj", 6, 1ll << 40},
                                        {"model.layers.0.self_attn.v_proj", 3, 4}}));
  EXPECT_EQ(huge.ExpectError(), ErrorCode::kInvalidField);
  good.Join(MakeHello("good", kDigest, kModules));
  bad.Join(MakeHello("bad", kDigest, kModules));
  const wire::RoundTask task = bad.Expect<wire::RoundTask>();
  wire::Update update = UpdateFor(task);
  update.metrics["train_loss\xff"] = 1.0;  // Not valid UTF-8: must not reach a JSON writer.
  bad.Send(update);
  EXPECT_EQ(bad.ExpectError(), ErrorCode::kInvalidField);
  good.Send(UpdateFor(good.Expect<wire::RoundTask>()));
  good.Expect<wire::Ack>();
  good.Expect<wire::Bye>();
  EXPECT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

TEST_F(CoordinatorTest, UnpinnedModelIsForgottenWhenEveryoneLeavesBeforeRoundZero) {
  config_.base_model_sha256.clear();  // Pin whatever the first client runs.
  StartCoordinator(system_clock_);
  {
    TestPeer impostor(context_, coordinator_->endpoint());
    std::vector<wire::ModuleInfo> other = kModules;
    other[0].d_in = 5;
    impostor.Join(MakeHello("impostor", std::string(64, 'e'), other));
    impostor.Send(wire::Bye{"leaving"});
  }
  // The impostor is gone before round 0: the honest federation can still form.
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  a.Send(UpdateFor(a.Expect<wire::RoundTask>()));
  b.Send(UpdateFor(b.Expect<wire::RoundTask>()));
  a.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  EXPECT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

// The takeover seen in the field: an impostor says Hello under a live client's name over and
// over while that client trains (silent for longer than one heartbeat interval). Without keys the
// live session keeps its name until the liveness rule drops it.
TEST_F(CoordinatorTest, AnImpostorCannotTakeTheNameOfALiveClient) {
  FakeClock& clock = fake_clock_;
  config_.round.min_clients = 1;
  StartCoordinator(clock);
  TestPeer alice(context_, coordinator_->endpoint());
  alice.Join(MakeHello("alice", kDigest, kModules));
  const wire::RoundTask task = alice.Expect<wire::RoundTask>();
  clock.Advance(std::chrono::milliseconds(150));  // Training: silent for 1.5 heartbeat intervals.
  TestPeer impostor(context_, coordinator_->endpoint());
  for (int i = 0; i < 50; ++i) {
    impostor.Send(MakeHello("alice", kDigest, kModules));
    ASSERT_EQ(impostor.ExpectError(), ErrorCode::kDuplicateClient);
  }
  alice.Send(UpdateFor(task));
  alice.Expect<wire::Ack>();
  alice.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_EQ(coordinator_->counters().clients_admitted, 1u);
  EXPECT_EQ(coordinator_->counters().updates_accepted, 1u);
}

TEST_F(CoordinatorTest, ANameIsFreeAgainOnceItsSessionExpired) {
  FakeClock& clock = fake_clock_;
  config_.round.min_clients = 3;  // No round: only sessions matter.
  StartCoordinator(clock);
  TestPeer alice(context_, coordinator_->endpoint());
  alice.Join(MakeHello("alice", kDigest, kModules));
  TestPeer successor(context_, coordinator_->endpoint());
  successor.Send(MakeHello("alice", kDigest, kModules));
  EXPECT_EQ(successor.ExpectError(), ErrorCode::kDuplicateClient);
  // Silent for heartbeat_interval_ms x heartbeat_liveness: dropped, the name is free.
  ASSERT_NO_FATAL_FAILURE(ExpireTheSilentOne(clock));
  successor.Join(MakeHello("alice", kDigest, kModules));
  StopCoordinator();  // Before `clock` goes out of scope.
}

// Found under load: a client dropped while its heartbeats sat in the coordinator's queue kept
// talking in its old session and was told only UNEXPECTED_MESSAGE (which it ignores, being for no
// session), so it noticed after interval x liveness of silence. SESSION_MISMATCH tells it at once.
TEST_F(CoordinatorTest, AMessageInASessionThatEndedIsAnsweredWithSessionMismatch) {
  FakeClock& clock = fake_clock_;
  config_.round.min_clients = 3;  // No round: only sessions matter.
  StartCoordinator(clock);
  TestPeer alice(context_, coordinator_->endpoint());
  alice.Join(MakeHello("alice", kDigest, kModules));
  ASSERT_NO_FATAL_FAILURE(ExpireTheSilentOne(clock));
  alice.Send(wire::Heartbeat{});
  const wire::Error error = alice.Expect<wire::Error>();
  EXPECT_EQ(error.code, ErrorCode::kSessionMismatch);
  EXPECT_NE(error.message.find("say Hello again"), std::string::npos) << error.message;
  TestPeer stranger(context_, coordinator_->endpoint());  // Never had a session.
  stranger.SendFrames(stranger.Frames(wire::Heartbeat{}));
  EXPECT_EQ(stranger.ExpectError(), ErrorCode::kUnexpectedMessage);
  StopCoordinator();  // Before `clock` goes out of scope.
}

// The wedge seen in the field: 40 sybils said Hello, were selected with 3 honest clients (quorum
// 50% of 43 = 22), never uploaded and left. The quorum counts only clients that can still answer,
// so the honest uploads suffice at once, without waiting for the deadline.
TEST_F(CoordinatorTest, ARoundAbandonedBySybilsCommitsAsSoonAsHonestClientsSuffice) {
  FakeClock& clock = fake_clock_;  // Never moves: nothing may wait for a deadline.
  config_.round.min_clients = 2;
  config_.round.quorum = 2;
  config_.round.quorum_fraction = 0.5;
  config_.round.wait_for_clients = 43;
  config_.transport.max_message_bytes = 1 << 20;
  StartCoordinator(clock);
  std::vector<std::unique_ptr<TestPeer>> honest, sybils;
  for (int i = 0; i < 3; ++i) {
    honest.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
    honest.back()->Join(MakeHello("honest-" + std::to_string(i), kDigest, kModules));
  }
  for (int i = 0; i < 40; ++i) {
    sybils.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
    sybils.back()->Join(MakeHello("sybil-" + std::to_string(i), kDigest, kModules));
  }
  for (auto& h : honest) h->Send(UpdateFor(h->Expect<wire::RoundTask>()));
  for (auto& h : honest) h->Expect<wire::Ack>();
  for (auto& s : sybils) {
    s->Expect<wire::RoundTask>();
    s->Send(wire::Bye{"gone"});
  }
  honest.front()->Expect<wire::Bye>();  // Round 1 committed: the run is complete.
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_selected\":43"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"clients_reported\":3"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"attempts\":1"), std::string::npos) << round1;
}

// Below the quorum with too few live clients to reach it, the round waits for clients instead of
// tasking the one that is there (an attempt that could not succeed): the retry starts once enough
// clients are live.
TEST_F(CoordinatorTest, ARetryWaitsUntilEnoughClientsAreLiveToReachTheQuorum) {
  FakeClock& clock = fake_clock_;
  config_.round.min_clients = 3;
  config_.round.quorum = 3;
  config_.round.timeout_ms = 5000;
  StartCoordinator(clock);
  TestPeer a(context_, coordinator_->endpoint()), b(context_, coordinator_->endpoint()),
      c(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  c.Join(MakeHello("c", kDigest, kModules));
  a.Send(UpdateFor(a.Expect<wire::RoundTask>()));
  a.Expect<wire::Ack>();
  b.Expect<wire::RoundTask>();
  c.Expect<wire::RoundTask>();
  b.Send(wire::Bye{"gone"});
  c.Send(wire::Bye{"gone"});
  clock.Advance(std::chrono::seconds(6));  // Past the deadline and round.retry_delay_ms.
  coordinator_->Wake();
  TestPeer d(context_, coordinator_->endpoint());
  d.Join(MakeHello("d", kDigest, kModules));  // 1 upload + 1 live client < 3: no attempt yet.
  TestPeer e(context_, coordinator_->endpoint());
  e.Join(MakeHello("e", kDigest, kModules));  // 1 + 2 = 3: attempt 2.
  d.Send(UpdateFor(d.Expect<wire::RoundTask>()));
  e.Send(UpdateFor(e.Expect<wire::RoundTask>()));
  a.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":3"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"attempts\":2"), std::string::npos) << round1;
}

// The poisoning seen in the field: a client declaring 1e9 examples took 0.9999994 of the average.
// Its declaration counts as strategy.max_examples_per_client, and metrics say so.
TEST_F(CoordinatorTest, ADeclaredExampleCountCountsAtMostTheCap) {
  config_.round.quorum = 2;
  config_.strategy.max_examples_per_client = 300;
  StartCoordinator(system_clock_);
  TestPeer honest(context_, coordinator_->endpoint()), greedy(context_, coordinator_->endpoint());
  honest.Join(MakeHello("honest", kDigest, kModules));
  greedy.Join(MakeHello("greedy", kDigest, kModules));
  honest.Send(UpdateFor(honest.Expect<wire::RoundTask>()));  // 100 examples.
  wire::Update claim = UpdateFor(greedy.Expect<wire::RoundTask>());
  claim.num_examples = 1'000'000'000;
  greedy.Send(claim);
  honest.Expect<wire::Ack>();
  greedy.Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"weights\":{\"greedy\":0.75,\"honest\":0.25}"), std::string::npos)
      << round1;
  EXPECT_NE(round1.find("\"examples_capped\":{\"greedy\":1000000000}"), std::string::npos)
      << round1;
}

TEST_F(CoordinatorTest, MoreSamplesThanTheTaskCouldProcessAreRefused) {
  config_.round.min_clients = 1;
  StartCoordinator(system_clock_);
  TestPeer a(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  wire::Update inflated = UpdateFor(task);
  inflated.num_samples = std::uint64_t{task.train.local_steps} * task.train.batch_size + 1;
  a.Send(inflated);
  const wire::Error refused = a.Expect<wire::Error>();
  EXPECT_EQ(refused.code, ErrorCode::kInvalidField);
  EXPECT_NE(refused.message.find("num_samples"), std::string::npos) << refused.message;
  wire::Update honest = UpdateFor(task);
  honest.num_samples = std::uint64_t{task.train.local_steps} * task.train.batch_size;
  a.Send(honest);
  a.Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

}  // namespace
}  // namespace fedlora::server
