// The coordinator under CURVE, on real TCP loopback sockets: who may connect, who may use which
// name, revocation, and results bound to their tasks. Peers are hand-driven (test_peer.h).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "common/fs.h"
#include "server/authorized_clients.h"
#include "server/checkpoint_store.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"
#include "tests/testing/tcp_tap.h"

namespace fedlora::server {
namespace {

using testing::MakeHello;
using testing::TestPeer;
using wire::ErrorCode;

using testing::kDigest;
using testing::kModules;

using KeyPair = std::shared_ptr<const crypto::CurveKeyPair>;
KeyPair NewKeys() { return std::make_shared<const crypto::CurveKeyPair>(crypto::GenerateCurveKeyPair()); }

// A value no honest adapter holds, to look for in the captured bytes.
constexpr float kMarker = 4.2e37f;

class CoordinatorSecurityTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("coord_security");
    coordinator_keys_ = std::make_shared<const crypto::CurveKeyPair>(
        crypto::WriteNewKeyFiles(dir_ + "/keys", "coordinator").value());
    authorized_ = dir_ + "/authorized_clients";
    for (const char* who : {"alice", "bob", "carol"}) {
      keys_[who] = NewKeys();
      EXPECT_TRUE(AddAuthorizedClient(authorized_, who, keys_[who]->public_key).ok());
    }
    config_.state_dir = dir_ + "/state";
    config_.transport.bind = "tcp://127.0.0.1:*";
    config_.security.mode = "curve";
    config_.security.secret_key_file = crypto::KeyFilesFor(dir_ + "/keys", "coordinator").secret_path;
    config_.security.authorized_clients = authorized_;
  }

  Status StartCoordinator(const Clock& clock) { return LaunchCoordinator(clock); }
  void Start(const Clock& clock) { ASSERT_TRUE(StartCoordinator(clock).ok()); }

  // Socket options of a peer holding `keys` and pinning `server` (default: the coordinator's).
  net::SocketOptions Curve(const KeyPair& keys,
                           std::optional<crypto::CurvePublicKey> server = std::nullopt) const {
    net::SocketOptions options;
    options.curve = net::CurveOptions{keys, server.value_or(coordinator_keys_->public_key), ""};
    return options;
  }
  std::unique_ptr<TestPeer> Peer(const std::string& who, const std::string& endpoint = "") {
    return std::make_unique<TestPeer>(context_,
                                      endpoint.empty() ? coordinator_->endpoint() : endpoint,
                                      Curve(keys_.at(who)));
  }

  static wire::Update UpdateFor(const wire::RoundTask& task, float value = 0.5f) {
    return Answer(task, value, /*constant=*/true);
  }
  static bool Has(const std::string& line, const std::string& fragment) {
    return line.find(fragment) != std::string::npos;
  }
  // The newest committed global adapter (the coordinator must be gone: it holds the lock).
  TensorMap CommittedAdapter() const {
    return CheckpointStore::Open(config_.state_dir).value().LoadLatest().value()->state.adapter;
  }
  // Waits (bounded) until the coordinator's counters satisfy `done`: for effects that have no
  // message of their own. The bound only guards against a hang.
  template <typename F>
  bool WaitForCounters(F done) {
    for (int i = 0; i < 3000; ++i) {
      if (done(coordinator_->counters())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  std::string authorized_;
  KeyPair coordinator_keys_;
  std::map<std::string, KeyPair> keys_;
};

// Runs one round with two clients through a tap and returns what an eavesdropper captured, with
// whether it saw the round's task tensor and the uploads' marker values.
struct WireCapture {
  bool saw_task_tensor = false;
  bool saw_upload = false;
  bool saw_client_name = false;
};

TEST_F(CoordinatorSecurityTest, AuthorizedClientsCompleteARoundAndNoTensorCrossesTheWireInClear) {
  const auto run = [&](bool curve) {
    WireCapture capture;
    config_.security.mode = curve ? "curve" : "none";
    config_.state_dir = dir_ + (curve ? "/state-curve" : "/state-plain");
    Start(system_clock_);
    testing::TcpTap tap(coordinator_->endpoint());
    const auto peer = [&](const std::string& who) {
      return curve ? Peer(who, tap.endpoint())
                   : std::make_unique<TestPeer>(context_, tap.endpoint());
    };
    auto alice = peer("alice");
    auto bob = peer("bob");
    alice->Join(MakeHello("alice", kDigest, kModules));
    bob->Join(MakeHello("bob", kDigest, kModules));
    const wire::RoundTask ta = alice->Expect<wire::RoundTask>();
    const wire::RoundTask tb = bob->Expect<wire::RoundTask>();
    alice->Send(UpdateFor(ta, kMarker));
    bob->Send(UpdateFor(tb, kMarker));
    alice->Expect<wire::Ack>();
    alice->Expect<wire::Bye>();
    EXPECT_TRUE(FinishCoordinator().ok()) << result_.ToString();
    // The global A the task carried (Kaiming-uniform random values): its bytes.
    const Tensor& a = ta.tensors.at("model.layers.0.self_attn.q_proj.lora_A.weight");
    const std::string task_bytes(reinterpret_cast<const char*>(a.data.data()), a.data.size());
    std::string marker(4 * sizeof(float), '\0');  // The smallest uploaded tensor has 6 values.
    for (int i = 0; i < 4; ++i) std::memcpy(&marker[i * sizeof(float)], &kMarker, sizeof(float));
    capture.saw_task_tensor = tap.Saw(task_bytes);
    capture.saw_upload = tap.Saw(marker);
    capture.saw_client_name = tap.Saw("alice");
    EXPECT_GT(tap.Captured().size(), 2 * a.data.size());
    StopCoordinator();
    return capture;
  };
  // The control: in plaintext the eavesdropper sees it all, so the search below can fail.
  const WireCapture plain = run(false);
  EXPECT_TRUE(plain.saw_task_tensor);
  EXPECT_TRUE(plain.saw_upload);
  EXPECT_TRUE(plain.saw_client_name);
  const WireCapture curve = run(true);
  EXPECT_FALSE(curve.saw_task_tensor);
  EXPECT_FALSE(curve.saw_upload);
  EXPECT_FALSE(curve.saw_client_name);
}

TEST_F(CoordinatorSecurityTest, KeyThatIsNotEnrolledIsRefusedDuringTheHandshake) {
  Start(system_clock_);
  keys_["mallory"] = NewKeys();
  auto mallory = Peer("mallory");
  EXPECT_TRUE(mallory->WaitForEvent(net::MonitorEventKind::kHandshakeFailedAuth));
  // It may still go out, queued for a reconnection that fails the same way, or not at all.
  (void)mallory->TrySend(MakeHello("mallory", kDigest, kModules));
  // Nothing reached the coordinator; an enrolled client is served as usual.
  auto alice = Peer("alice");
  alice->Join(MakeHello("alice", kDigest, kModules));
  const CoordinatorCounters c = coordinator_->counters();
  EXPECT_EQ(c.clients_admitted, 1u);
  EXPECT_GE(c.handshakes_denied, 1u);
}

TEST_F(CoordinatorSecurityTest, EnrolledKeyCannotSpeakUnderAnotherClientsName) {
  Start(system_clock_);
  auto alice = Peer("alice");
  alice->Send(MakeHello("bob", kDigest, kModules));
  const wire::Error refused = alice->Expect<wire::Error>();
  EXPECT_EQ(refused.code, ErrorCode::kNotAuthorized);
  EXPECT_NE(refused.message.find("enrolled as 'alice', not as 'bob'"), std::string::npos)
      << refused.message;
  EXPECT_EQ(coordinator_->counters().not_authorized, 1u);
  // Under its own name the same connection is welcome; bob's name is still free for bob.
  alice->Join(MakeHello("alice", kDigest, kModules));
  auto bob = Peer("bob");
  bob->Join(MakeHello("bob", kDigest, kModules));
  EXPECT_EQ(coordinator_->counters().clients_admitted, 2u);
}

TEST_F(CoordinatorSecurityTest, ReconnectWithTheEnrolledKeyReplacesTheLiveSession) {
  config_.round.min_clients = 3;  // No round starts: only sessions matter here.
  Start(system_clock_);
  auto first = Peer("alice");
  first->Join(MakeHello("alice", kDigest, kModules));
  // Without CURVE a second live connection under this name gets DUPLICATE_CLIENT; with the key
  // that proves it is alice, the new connection is alice.
  auto second = Peer("alice");
  second->Join(MakeHello("alice", kDigest, kModules));
  EXPECT_EQ(coordinator_->counters().clients_admitted, 2u);
  EXPECT_EQ(coordinator_->counters().protocol_errors, 0u);
}

TEST_F(CoordinatorSecurityTest, RevokedKeyMidRoundLosesItsSessionAndItsUpload) {
  config_.round.min_clients = 3;
  config_.round.quorum = 2;
  Start(system_clock_);
  auto alice = Peer("alice");
  auto bob = Peer("bob");
  auto carol = Peer("carol");
  alice->Join(MakeHello("alice", kDigest, kModules));
  bob->Join(MakeHello("bob", kDigest, kModules));
  carol->Join(MakeHello("carol", kDigest, kModules));
  const wire::RoundTask ta = alice->Expect<wire::RoundTask>();
  const wire::RoundTask tb = bob->Expect<wire::RoundTask>();
  const wire::RoundTask tc = carol->Expect<wire::RoundTask>();
  alice->Send(UpdateFor(ta, 100.0f));
  alice->Expect<wire::Ack>();  // Accepted and persisted...

  ASSERT_TRUE(RemoveAuthorizedClient(authorized_, "alice").ok());
  coordinator_->Reload();  // ...then the operator revokes alice (SIGHUP).
  const wire::Error closed = alice->Expect<wire::Error>();
  EXPECT_EQ(closed.code, ErrorCode::kNotAuthorized);
  alice->Send(wire::Heartbeat{});  // The old connection is heard no more.
  EXPECT_EQ(alice->ExpectError(), ErrorCode::kNotAuthorized);

  bob->Send(UpdateFor(tb, 1.0f));
  carol->Send(UpdateFor(tc, 3.0f));
  bob->Expect<wire::Ack>();
  bob->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_TRUE(Has(round1, "\"clients_reported\":2")) << round1;
  EXPECT_FALSE(Has(round1, "\"weights\":{\"alice\"")) << round1;
  EXPECT_TRUE(Has(round1, "\"clients_revoked\":1")) << round1;
  EXPECT_TRUE(Has(round1, "\"uploads_dropped\":1")) << round1;
  EXPECT_TRUE(Has(round1, "\"NOT_AUTHORIZED\":")) << round1;
  const CoordinatorCounters c = coordinator_->counters();
  EXPECT_EQ(c.clients_revoked, 1u);
  EXPECT_EQ(c.uploads_dropped, 1u);
  // The global adapter is the mean of bob's and carol's uploads (1 and 3), not alice's 100.
  StopCoordinator();
  for (const auto& [name, t] : CommittedAdapter()) {
    for (double v : ToDoubles(t)) EXPECT_NEAR(v, 2.0, 1e-6) << name;
  }
}

TEST_F(CoordinatorSecurityTest, RevocationDuringEvaluationAggregatesAgainWithoutTheRevokedUpload) {
  config_.round.quorum = 2;
  config_.eval.enabled = true;
  config_.eval.initial = false;
  config_.robust.norm_bound = 0;  // alice's distinctive values (constant 100) stay unclipped.
  Start(system_clock_);
  auto alice = Peer("alice");
  auto bob = Peer("bob");
  alice->Join(MakeHello("alice", kDigest, kModules));
  bob->Join(MakeHello("bob", kDigest, kModules));
  alice->Send(UpdateFor(alice->Expect<wire::RoundTask>(), 100.0f));
  bob->Send(UpdateFor(bob->Expect<wire::RoundTask>(), 1.0f));
  alice->Expect<wire::Ack>();
  bob->Expect<wire::Ack>();
  alice->Expect<wire::EvalTask>();  // Aggregated with alice's upload; now evaluating.
  const wire::EvalTask stale_eval = bob->Expect<wire::EvalTask>();
  EXPECT_NEAR(ToDoubles(stale_eval.tensors.begin()->second).front(), 50.5, 1e-6);

  ASSERT_TRUE(RemoveAuthorizedClient(authorized_, "alice").ok());
  coordinator_->Reload();
  EXPECT_EQ(alice->ExpectError(), ErrorCode::kNotAuthorized);
  // Below the quorum without alice: carol is asked to train for the round.
  auto carol = Peer("carol");
  carol->Join(MakeHello("carol", kDigest, kModules));
  carol->Send(UpdateFor(carol->Expect<wire::RoundTask>(), 3.0f));
  carol->Expect<wire::Ack>();
  // The new aggregate (bob + carol: 2) is evaluated...
  const wire::EvalTask eb = bob->Expect<wire::EvalTask>();
  const wire::EvalTask ec = carol->Expect<wire::EvalTask>();
  EXPECT_NEAR(ToDoubles(eb.tensors.begin()->second).front(), 2.0, 1e-6);
  // ...and a result for the discarded one is refused by its ticket.
  bob->Send(wire::EvalResult{1, 1.0, 10, 1, {}, 0, stale_eval.ticket});
  EXPECT_EQ(bob->ExpectError(), ErrorCode::kTaskMismatch);
  bob->Send(wire::EvalResult{1, 1.0, 10, 1, {}, 0, eb.ticket});
  carol->Send(wire::EvalResult{1, 1.0, 10, 1, {}, 0, ec.ticket});
  bob->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().back();
  EXPECT_TRUE(Has(round1, "\"weights\":{\"bob\":0.5,\"carol\":0.5}")) << round1;
  EXPECT_TRUE(Has(round1, "\"uploads_dropped\":1")) << round1;
}

TEST_F(CoordinatorSecurityTest, EditingTheFileRevokesWithoutASignal) {
  config_.round.min_clients = 3;
  Start(system_clock_);
  auto alice = Peer("alice");
  alice->Join(MakeHello("alice", kDigest, kModules));
  ASSERT_TRUE(RemoveAuthorizedClient(authorized_, "alice").ok());
  // The coordinator notices the new file by itself (it checks about once a second).
  EXPECT_EQ(alice->ExpectError(), ErrorCode::kNotAuthorized);
  EXPECT_EQ(coordinator_->counters().key_reloads, 1u);
  // A broken edit keeps the previous list (bob stays enrolled) and is counted.
  ASSERT_TRUE(fs::WriteFileAtomic(authorized_, "bob not-a-key\n").ok());
  coordinator_->Reload();
  EXPECT_TRUE(WaitForCounters([](const CoordinatorCounters& c) { return c.key_reload_errors >= 1; }));
  auto bob = Peer("bob");
  bob->Join(MakeHello("bob", kDigest, kModules));
}

TEST_F(CoordinatorSecurityTest, StartsBeforeAnyEnrolmentAndAdmitsTheFirstEnrolledClient) {
  std::filesystem::remove(authorized_);
  config_.round.min_clients = 3;
  Start(system_clock_);
  auto early = Peer("alice");
  EXPECT_TRUE(early->WaitForEvent(net::MonitorEventKind::kHandshakeFailedAuth));
  ASSERT_TRUE(AddAuthorizedClient(authorized_, "alice", keys_["alice"]->public_key).ok());
  coordinator_->Reload();
  EXPECT_TRUE(WaitForCounters([](const CoordinatorCounters& c) { return c.key_reloads >= 1; }));
  auto alice = Peer("alice");
  alice->Join(MakeHello("alice", kDigest, kModules));
}

TEST_F(CoordinatorSecurityTest, ReplayedUpdateFromAnEarlierRoundIsRefused) {
  config_.rounds = 2;
  config_.round.min_clients = 1;
  Start(system_clock_);
  auto alice = Peer("alice");
  alice->Join(MakeHello("alice", kDigest, kModules));
  const wire::Update first = UpdateFor(alice->Expect<wire::RoundTask>());
  alice->Send(first);
  alice->Expect<wire::Ack>();
  const wire::RoundTask second = alice->Expect<wire::RoundTask>();
  ASSERT_EQ(second.round, 2u);
  EXPECT_NE(second.ticket, first.ticket);

  alice->Send(first);  // The round-1 upload again: its round is over.
  EXPECT_EQ(alice->ExpectError(), ErrorCode::kStaleRound);
  wire::Update relabelled = first;  // Relabelled as round 2: the ticket gives it away.
  relabelled.round = 2;
  alice->Send(relabelled);
  EXPECT_EQ(alice->ExpectError(), ErrorCode::kTaskMismatch);
  alice->Send(UpdateFor(second, 0.25f));
  alice->Expect<wire::Ack>();
  alice->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round2 = MetricsLines().at(2);
  EXPECT_TRUE(Has(round2, "\"refusals\":{\"STALE_ROUND\":1,\"TASK_MISMATCH\":1}")) << round2;
  EXPECT_EQ(coordinator_->counters().task_mismatches, 1u);
  EXPECT_EQ(coordinator_->counters().updates_accepted, 2u);
}

TEST_F(CoordinatorSecurityTest, UpdateCarryingAnotherClientsTicketIsRefused) {
  config_.round.quorum = 2;
  Start(system_clock_);
  auto alice = Peer("alice");
  auto bob = Peer("bob");
  alice->Join(MakeHello("alice", kDigest, kModules));
  bob->Join(MakeHello("bob", kDigest, kModules));
  const wire::RoundTask ta = alice->Expect<wire::RoundTask>();
  const wire::RoundTask tb = bob->Expect<wire::RoundTask>();
  wire::Update forged = UpdateFor(tb, 9.0f);
  forged.ticket = ta.ticket;  // Bob answers with alice's ticket.
  bob->Send(forged);
  EXPECT_EQ(bob->ExpectError(), ErrorCode::kTaskMismatch);
  EXPECT_EQ(coordinator_->counters().updates_accepted, 0u);
  bob->Send(UpdateFor(tb, 1.0f));
  alice->Send(UpdateFor(ta, 3.0f));
  bob->Expect<wire::Ack>();
  alice->Expect<wire::Ack>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  StopCoordinator();
  for (const auto& [name, t] : CommittedAdapter()) {
    for (double v : ToDoubles(t)) EXPECT_NEAR(v, 2.0, 1e-6) << name;
  }
}

TEST_F(CoordinatorSecurityTest, RetryIssuesANewTicketAndRefusesTheEarlierAttempts) {
  FakeClock& clock = fake_clock_;
  config_.round.quorum = 2;
  config_.round.timeout_ms = 5000;
  Start(clock);
  auto alice = Peer("alice");
  auto bob = Peer("bob");
  alice->Join(MakeHello("alice", kDigest, kModules));
  bob->Join(MakeHello("bob", kDigest, kModules));
  const wire::RoundTask ta = alice->Expect<wire::RoundTask>();
  const wire::RoundTask first = bob->Expect<wire::RoundTask>();
  EXPECT_EQ(first.ticket.attempt, 1u);
  alice->Send(UpdateFor(ta));
  alice->Expect<wire::Ack>();
  clock.Advance(std::chrono::seconds(6));  // Bob misses the deadline: attempt 2 asks him again.
  coordinator_->Wake();
  const wire::RoundTask retry = bob->Expect<wire::RoundTask>();
  EXPECT_EQ(retry.ticket.attempt, 2u);
  EXPECT_NE(retry.ticket.nonce, first.ticket.nonce);
  bob->Send(UpdateFor(first));
  EXPECT_EQ(bob->ExpectError(), ErrorCode::kTaskMismatch);
  bob->Send(UpdateFor(retry));
  bob->Expect<wire::Ack>();
  alice->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

TEST_F(CoordinatorSecurityTest, CoordinatorKeepsServingWhileAnUnauthorizedPeerRetries) {
  config_.rounds = 2;
  Start(system_clock_);
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0};
  std::thread rogue([&] {
    // A stranger that reconnects in a loop with fresh unenrolled keys (and one socket that
    // libzmq keeps retrying by itself).
    net::Context rogue_context;
    TestPeer persistent(rogue_context, coordinator_->endpoint(), Curve(NewKeys()));
    while (!stop.load()) {
      TestPeer attempt(rogue_context, coordinator_->endpoint(), Curve(NewKeys()));
      if (attempt.WaitForEvent(net::MonitorEventKind::kHandshakeFailedAuth)) ++refused;
    }
  });
  auto alice = Peer("alice");
  auto bob = Peer("bob");
  alice->Join(MakeHello("alice", kDigest, kModules));
  bob->Join(MakeHello("bob", kDigest, kModules));
  for (std::uint64_t round = 1; round <= 2; ++round) {
    const wire::RoundTask ta = alice->Expect<wire::RoundTask>();
    const wire::RoundTask tb = bob->Expect<wire::RoundTask>();
    EXPECT_EQ(ta.round, round);
    alice->Send(UpdateFor(ta));
    bob->Send(UpdateFor(tb));
    alice->Expect<wire::Ack>();
    bob->Expect<wire::Ack>();
  }
  alice->Expect<wire::Bye>();
  stop = true;
  rogue.join();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_GE(refused.load(), 1);
  EXPECT_GE(coordinator_->counters().handshakes_denied, static_cast<std::uint64_t>(refused.load()));
  EXPECT_EQ(coordinator_->counters().clients_admitted, 2u);
}

// Over a network a Bye can be lost with the connection at the very end: a client still heard from
// after the last round gets Bye again, and the coordinator ends as soon as every client answered.
TEST_F(CoordinatorSecurityTest, AClientStillHeardFromAfterTheLastRoundGetsByeAgain) {
  config_.round.min_clients = 1;
  config_.transport.heartbeat_interval_ms = 60000;  // The farewell would last two minutes.
  Start(system_clock_);
  auto alice = Peer("alice");
  alice->Join(MakeHello("alice", kDigest, kModules));
  alice->Send(UpdateFor(alice->Expect<wire::RoundTask>()));
  alice->Expect<wire::Ack>();
  alice->Expect<wire::Bye>();
  alice->Send(wire::Heartbeat{});  // As if the Bye had not arrived.
  alice->Expect<wire::Bye>();
  alice->Send(wire::Bye{"run complete"});
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();  // At once: nobody is left.
}

TEST_F(CoordinatorSecurityTest, SecretKeyFileReadableByOthersIsRefusedAtStart) {
  ASSERT_EQ(::chmod(config_.security.secret_key_file.c_str(), 0644), 0);
  const Status s = StartCoordinator(system_clock_);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find(config_.security.secret_key_file), std::string::npos);
  EXPECT_NE(s.message().find("0644"), std::string::npos);
}

TEST_F(CoordinatorSecurityTest, PlaintextOnAPublicAddressNeedsAnExplicitOptOut) {
  config_.transport.bind = "tcp://0.0.0.0:*";
  config_.security.mode = "none";
  const Status refused = StartCoordinator(system_clock_);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("allow_insecure"), std::string::npos);
  config_.security.allow_insecure = true;
  EXPECT_TRUE(StartCoordinator(system_clock_).ok());
  EXPECT_FALSE(coordinator_->public_key().has_value());
}

TEST_F(CoordinatorSecurityTest, AutoModeIsCurveOnAPublicAddress) {
  config_.transport.bind = "tcp://0.0.0.0:*";
  config_.security.mode = "auto";
  Start(system_clock_);
  ASSERT_TRUE(coordinator_->public_key().has_value());
  EXPECT_EQ(*coordinator_->public_key(), coordinator_keys_->public_key);
}

}  // namespace
}  // namespace fedlora::server
