// The client session against a real coordinator over TCP loopback, with CURVE: a working
// federation, and every way the handshake can be refused ending Run() at once with an error that
// says which side is wrong (never a silent reconnect loop).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <thread>

#include "client/session.h"
#include "server/authorized_clients.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"
#include "tests/client/fake_worker.h"

namespace fedlora::client {
namespace {

using testing::FakeWorker;
using testing::kDigest;

class SessionSecurityTest : public fedlora::testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("session_security");
    const std::string keys = dir_ + "/keys";
    coordinator_public_ = crypto::WriteNewKeyFiles(keys, "coordinator").value().public_key;
    authorized_ = dir_ + "/authorized_clients";
    for (const char* who : {"alice", "bob"}) {
      const crypto::CurvePublicKey key = crypto::WriteNewKeyFiles(keys, who).value().public_key;
      EXPECT_TRUE(server::AddAuthorizedClient(authorized_, who, key).ok());
    }
    ASSERT_TRUE(crypto::WriteNewKeyFiles(keys, "mallory").ok());  // Never enrolled.

    config_.state_dir = dir_ + "/state";
    config_.transport.bind = "tcp://127.0.0.1:*";
    config_.transport.heartbeat_interval_ms = 50;
    config_.transport.heartbeat_liveness = 100;
    config_.security.mode = "curve";
    config_.security.secret_key_file = crypto::KeyFilesFor(keys, "coordinator").secret_path;
    config_.security.authorized_clients = authorized_;
    config_.eval = server::EvalConfig{};

    client_config_.transport.reconnect_min_ms = 10;
    client_config_.transport.reconnect_max_ms = 50;
    client_config_.security.coordinator_public_key = coordinator_public_.Z85();
  }
  void StartCoordinator() {
    const Status started = LaunchCoordinator(system_clock_);
    ASSERT_TRUE(started.ok()) << started.ToString();
  }
  // The config of client `name` using the key files of `key` (default: its own).
  ClientConfig ConfigFor(const std::string& name, const std::string& key = "") const {
    ClientConfig c = client_config_;
    c.name = name;
    c.coordinator = coordinator_->endpoint();
    c.security.secret_key_file =
        crypto::KeyFilesFor(dir_ + "/keys", key.empty() ? name : key).secret_path;
    return c;
  }
  // Runs one session to its end.
  Status RunSession(const ClientConfig& config) {
    FakeWorker worker(config.name, kDigest);
    ClientSession session(config, worker, context_, system_clock_);
    return session.Run();
  }

  std::string authorized_;
  crypto::CurvePublicKey coordinator_public_;
  ClientConfig client_config_;
};

TEST_F(SessionSecurityTest, EnrolledClientsTrainAndEvaluateOverCurve) {
  StartCoordinator();
  FakeWorker alice("alice", kDigest), bob("bob", kDigest);
  ClientSession sa(ConfigFor("alice"), alice, context_, system_clock_);
  ClientSession sb(ConfigFor("bob"), bob, context_, system_clock_);
  Status ra, rb;
  std::thread ta([&] { ra = sa.Run(); });
  std::thread tb([&] { rb = sb.Run(); });
  ta.join();
  tb.join();
  (void)FinishCoordinator();
  EXPECT_TRUE(ra.ok()) << ra.ToString();
  EXPECT_TRUE(rb.ok()) << rb.ToString();
  EXPECT_TRUE(result_.ok()) << result_.ToString();
  EXPECT_EQ(alice.trains.load(), 1);
  EXPECT_EQ(alice.evals.load(), 2);  // Rounds 0 and 1: results carried their tasks' tickets.
  EXPECT_EQ(coordinator_->counters().updates_accepted, 2u);
  EXPECT_EQ(coordinator_->counters().task_mismatches, 0u);
}

TEST_F(SessionSecurityTest, UnenrolledKeyFailsAtOnceWithPermissionDenied) {
  StartCoordinator();
  const Status s = RunSession(ConfigFor("mallory"));
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("not enrolled"), std::string::npos) << s.message();
}

TEST_F(SessionSecurityTest, EnrolledKeyUnderAnotherNameFailsWithPermissionDenied) {
  StartCoordinator();
  const Status s = RunSession(ConfigFor("bob", /*key=*/"alice"));
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("enrolled as 'alice', not as 'bob'"), std::string::npos)
      << s.message();
}

TEST_F(SessionSecurityTest, WrongPinnedCoordinatorKeyFailsAtOnceWithUnauthenticated) {
  StartCoordinator();
  ClientConfig c = ConfigFor("alice");
  const crypto::CurvePublicKey impostor = crypto::GenerateCurveKeyPair().public_key;
  c.security.coordinator_public_key = impostor.Z85();
  const Status s = RunSession(c);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("not its key"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(impostor.Fingerprint()), std::string::npos) << s.message();
  EXPECT_EQ(coordinator_->counters().clients_admitted, 0u);
}

TEST_F(SessionSecurityTest, PlaintextClientAgainstACurveCoordinatorFailsAtOnce) {
  StartCoordinator();
  ClientConfig c = ConfigFor("alice");
  c.security = ClientSecurityConfig{};  // auto on loopback without keys: plaintext.
  const Status s = RunSession(c);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("requires CURVE"), std::string::npos) << s.message();
}

TEST_F(SessionSecurityTest, CurveClientAgainstAPlaintextCoordinatorFailsAtOnce) {
  config_.security.mode = "none";
  StartCoordinator();
  const Status s = RunSession(ConfigFor("alice"));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("does not use CURVE"), std::string::npos) << s.message();
  EXPECT_EQ(coordinator_->counters().messages_in, 0u);  // Not one byte of ours was sent.
}

TEST_F(SessionSecurityTest, SecretKeyFileWithMode0644IsRefusedBeforeConnecting) {
  StartCoordinator();
  ClientConfig c = ConfigFor("alice");
  ASSERT_EQ(::chmod(c.security.secret_key_file.c_str(), 0644), 0);
  const Status s = RunSession(c);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("mode 0644"), std::string::npos) << s.message();
  EXPECT_EQ(coordinator_->counters().handshakes_denied, 0u);
}

TEST_F(SessionSecurityTest, RevokedClientStopsWithPermissionDenied) {
  config_.round.min_clients = 3;  // Rounds never start: only the session matters.
  StartCoordinator();
  FakeWorker alice("alice", kDigest);
  ClientSession session(ConfigFor("alice"), alice, context_, system_clock_);
  Status result;
  std::thread t([&] { result = session.Run(); });
  // Revoke once alice is admitted (waiting on the coordinator's counter; bounded).
  for (int i = 0; i < 3000 && coordinator_->counters().clients_admitted == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(coordinator_->counters().clients_admitted, 1u);
  ASSERT_TRUE(server::RemoveAuthorizedClient(authorized_, "alice").ok());
  coordinator_->Reload();
  t.join();
  EXPECT_EQ(result.code(), StatusCode::kPermissionDenied) << result.ToString();
  EXPECT_NE(result.message().find("no longer enrolled"), std::string::npos) << result.message();
}

}  // namespace
}  // namespace fedlora::client
