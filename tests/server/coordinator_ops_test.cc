// The coordinator's ops endpoint scraped during a real round over real sockets: /metrics (read
// by python3-prometheus-client's parser), /status and the probes follow the round as it goes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <regex>
#include <set>

#include "common/fs.h"

#include "server/coordinator.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"
#include "tests/testing/prometheus_parse.h"

namespace fedlora::server {
namespace {

using ::testing::HasSubstr;
using testing::kDigest;
using testing::kModules;
using testing::MakeHello;
using testing::TestPeer;

class CoordinatorOpsTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("ops");
    config_.ops.listen = "127.0.0.1:0";
  }

  httplib::Client Client() const {
    const std::string url = coordinator_->ops_url();  // "http://127.0.0.1:PORT"
    return httplib::Client(url);
  }
  std::map<std::string, double> Metrics() const {
    const auto res = Client().Get("/metrics");
    EXPECT_TRUE(res && res->status == 200);
    Result<std::map<std::string, double>> parsed =
        testing::ParsePrometheusText(res ? res->body : std::string());
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
    return parsed.ok() ? *parsed : std::map<std::string, double>();
  }
  nlohmann::json StatusNow() const {
    const auto res = Client().Get("/status");
    EXPECT_TRUE(res && res->status == 200);
    return nlohmann::json::parse(res ? res->body : std::string("{}"));
  }
  static std::string StateOf(const nlohmann::json& status, const std::string& id) {
    for (const nlohmann::json& c : status["clients"]) {
      if (c["id"] == id) return c["state"];
    }
    return "absent";
  }
};

TEST_F(CoordinatorOpsTest, MetricsAndStatusFollowARealRound) {
  ASSERT_TRUE(LaunchOnInproc("ops").ok());
  ASSERT_FALSE(coordinator_->ops_url().empty());
  EXPECT_EQ(Client().Get("/healthz")->status, 200);
  // "starting" until the coordinator's thread enters Run(), then "waiting" for clients.
  const std::string first_phase = StatusNow()["phase"];
  EXPECT_TRUE(first_phase == "starting" || first_phase == "waiting") << first_phase;

  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask task_a = a.Expect<wire::RoundTask>();
  const wire::RoundTask task_b = b.Expect<wire::RoundTask>();

  // Tasks are out: round 1 in its fit phase, both clients training, nothing uploaded yet.
  nlohmann::json status = StatusNow();
  EXPECT_EQ(status["phase"], "fit");
  EXPECT_EQ(status["round"], 1);
  EXPECT_EQ(status["committed_round"], 0);
  EXPECT_EQ(StateOf(status, "a"), "training");
  EXPECT_EQ(StateOf(status, "b"), "training");
  EXPECT_GT(status["deadline_s"].get<double>(), 0);
  std::map<std::string, double> m = Metrics();
  EXPECT_EQ(m.at("fedlora_round_phase{phase=\"fit\"}"), 1);
  EXPECT_EQ(m.at("fedlora_round_phase{phase=\"waiting\"}"), 0);
  EXPECT_EQ(m.at("fedlora_round{}"), 1);
  EXPECT_EQ(m.at("fedlora_clients_connected{}"), 2);
  EXPECT_EQ(m.at("fedlora_uploads_accepted_total{}"), 0);
  EXPECT_EQ(m.at("fedlora_rounds_committed_total{}"), 1);  // Round 0, the initial adapter.
  EXPECT_EQ(Client().Get("/readyz")->status, 200);
  const double received_before = m.at("fedlora_received_bytes_total{}");

  a.Send(Answer(task_a, 0.5f, false));
  a.Expect<wire::Ack>();
  m = Metrics();
  EXPECT_EQ(m.at("fedlora_uploads_accepted_total{}"), 1);
  EXPECT_GT(m.at("fedlora_received_bytes_total{}"), received_before);
  status = StatusNow();
  EXPECT_EQ(StateOf(status, "a"), "reported");
  EXPECT_EQ(StateOf(status, "b"), "training");

  b.Send(Answer(task_b, 0.25f, false));
  b.Expect<wire::Ack>();
  a.Expect<wire::Bye>();
  b.Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();

  // The run is over: committed, counted, not ready any more (the endpoint lives as long as the
  // coordinator object).
  m = Metrics();
  EXPECT_EQ(m.at("fedlora_rounds_committed_total{}"), 2);
  EXPECT_EQ(m.at("fedlora_committed_round{}"), 1);
  EXPECT_EQ(m.at("fedlora_clients_selected_total{}"), 2);
  EXPECT_EQ(m.at("fedlora_clients_reported_total{}"), 2);
  EXPECT_EQ(m.at("fedlora_clients_failed_total{}"), 0);
  EXPECT_EQ(m.at("fedlora_uploads_accepted_total{}"), 2);
  EXPECT_EQ(m.at("fedlora_round_duration_seconds_count{}"), 1);
  EXPECT_EQ(m.at("fedlora_aggregation_duration_seconds_count{}"), 1);
  EXPECT_EQ(m.at("fedlora_train_loss{}"), 2.0);  // Answer() reports train_loss 2.
  EXPECT_GT(m.at("fedlora_sent_bytes_total{}"), 0);
  EXPECT_EQ(m.at("fedlora_round_phase{phase=\"done\"}"), 1);
  EXPECT_EQ(StatusNow()["phase"], "done");
  const auto ready = Client().Get("/readyz");
  EXPECT_EQ(ready->status, 503);
  EXPECT_THAT(ready->body, HasSubstr("run complete"));
}

// deploy/grafana/fedlora.json queries only metrics the coordinator exports (privacy's two only
// exist with privacy.enabled), so renaming one cannot leave a silently empty panel.
TEST_F(CoordinatorOpsTest, TheGrafanaDashboardQueriesOnlyExportedMetrics) {
  ASSERT_TRUE(LaunchOnInproc("ops").ok());
  std::set<std::string> exported = {"fedlora_privacy_epsilon_spent",
                                    "fedlora_privacy_epsilon_target"};
  const auto scraped = Client().Get("/metrics");
  ASSERT_TRUE(scraped);
  ASSERT_TRUE(testing::ParsePrometheusText(scraped->body).ok());
  const std::regex family("^# TYPE (fedlora_[a-z_]+) (counter|gauge|histogram)$",
                          std::regex::multiline);
  for (auto it = std::sregex_iterator(scraped->body.begin(), scraped->body.end(), family);
       it != std::sregex_iterator(); ++it) {
    exported.insert((*it)[1].str());
  }
  const std::string dashboard =
      fs::ReadFile(FEDLORA_SOURCE_DIR "/deploy/grafana/fedlora.json").value();
  const nlohmann::json json = nlohmann::json::parse(dashboard);
  std::size_t queried = 0;
  const std::regex metric("fedlora_[a-z_]+");
  for (const nlohmann::json& panel : json["panels"]) {
    for (const nlohmann::json& target : panel["targets"]) {
      const std::string expr = target["expr"];
      for (auto it = std::sregex_iterator(expr.begin(), expr.end(), metric);
           it != std::sregex_iterator(); ++it) {
        ++queried;
        std::string name = it->str();
        if (name.ends_with("_bucket")) name.resize(name.size() - 7);  // A histogram's series.
        EXPECT_TRUE(exported.contains(name)) << name << " in panel " << panel["title"];
      }
    }
  }
  EXPECT_GT(queried, 20u);
}

// Within a long fit phase the coordinator says where the round stands every 10 s (on its clock):
// updates in, clients training, time left.
TEST_F(CoordinatorOpsTest, ALongFitPhaseReportsWhereItStandsEveryTenSeconds) {
  config_.round.timeout_ms = 60000;
  ASSERT_TRUE(LaunchOnInproc("ops", &fake_clock_).ok());
  TestPeer a(context_, coordinator_->endpoint());
  TestPeer b(context_, coordinator_->endpoint());
  a.Join(MakeHello("a", kDigest, kModules));
  b.Join(MakeHello("b", kDigest, kModules));
  const wire::RoundTask task = a.Expect<wire::RoundTask>();
  b.Expect<wire::RoundTask>();
  a.Send(Answer(task, 0.5f, false));
  a.Expect<wire::Ack>();
  ::testing::internal::CaptureStderr();
  fake_clock_.Advance(std::chrono::seconds(11));
  (void)coordinator_->status();  // Waits for a turn of the loop after the clock moved.
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("round 1/1: 1 of 2 updates in, 1 client(s) training, 0 failed; 11 s "
                             "in, deadline in 49 s"));
}

// A refused message shows at once, by its error code, not only at the next commit.
TEST_F(CoordinatorOpsTest, RefusedMessagesAreCountedByCodeAsTheyHappen) {
  ASSERT_TRUE(LaunchOnInproc("ops").ok());
  TestPeer rude(context_, coordinator_->endpoint());
  rude.Send(wire::Heartbeat{});  // Before any Hello.
  EXPECT_EQ(rude.ExpectError(), wire::ErrorCode::kUnexpectedMessage);
  const std::map<std::string, double> m = Metrics();
  EXPECT_EQ(m.at("fedlora_messages_refused_total{code=\"UNEXPECTED_MESSAGE\"}"), 1);
  EXPECT_EQ(m.at("fedlora_protocol_errors_total{}"), 1);
}

// Secure by default: a coordinator asked to serve its ops endpoint on every interface without
// ops.allow_remote does not start.
TEST_F(CoordinatorOpsTest, AnOpsEndpointOnAPublicAddressIsRefusedAtStart) {
  config_.ops.listen = "0.0.0.0:0";
  const Status started = LaunchOnInproc("ops");
  ASSERT_FALSE(started.ok());
  EXPECT_EQ(started.code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(started.message(), HasSubstr("ops.allow_remote"));
}

}  // namespace
}  // namespace fedlora::server
