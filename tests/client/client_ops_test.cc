// A client's own ops endpoint over a real session against a real coordinator.
#include "client/client_ops.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <thread>

#include "tests/client/fake_worker.h"
#include "tests/server/coordinator_harness.h"
#include "tests/testing/prometheus_parse.h"

namespace fedlora::client {
namespace {

using testing::FakeWorker;
using ::testing::HasSubstr;
using testing::kDigest;

class ClientOpsTest : public fedlora::testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("client_ops");
    config_.rounds = 1;
    config_.round.min_clients = 1;
    config_.transport.bind =
        StrCat("inproc://client-ops-test-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    config_.eval = server::EvalConfig{};  // Rounds 0 and 1 evaluated.
    client_.name = "alice";
    client_.coordinator = config_.transport.bind;
    client_.ops.listen = "127.0.0.1:0";
  }
  ClientConfig client_;
};

TEST_F(ClientOpsTest, MetricsAndStatusCountWhatTheSessionDid) {
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  FakeWorker alice("alice", kDigest);
  ClientSession session(client_, alice, context_, system_clock_);
  Result<std::unique_ptr<ops::OpsServer>> endpoint = StartClientOps(client_, session);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  httplib::Client http((*endpoint)->url());
  const auto before = http.Get("/readyz");
  EXPECT_EQ(before->status, 503);
  EXPECT_THAT(before->body, HasSubstr("not connected"));
  EXPECT_EQ(http.Get("/healthz")->status, 200);

  Status ran;
  std::thread thread([&] { ran = session.Run(); });
  thread.join();
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();

  const auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics && metrics->status == 200);
  const Result<std::map<std::string, double>> m =
      fedlora::testing::ParsePrometheusText(metrics->body);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->at("fedlora_client_info{name=\"alice\"}"), 1);
  EXPECT_EQ(m->at("fedlora_client_connections_total{}"), 1);
  EXPECT_EQ(m->at("fedlora_client_tasks_received_total{}"), 1);
  EXPECT_EQ(m->at("fedlora_client_updates_sent_total{}"), 1);
  EXPECT_EQ(m->at("fedlora_client_updates_acknowledged_total{}"), 1);
  EXPECT_EQ(m->at("fedlora_client_evaluations_total{}"), 2);  // Rounds 0 and 1.
  EXPECT_EQ(m->at("fedlora_client_round{}"), 1);
  EXPECT_GT(m->at("fedlora_client_sent_bytes_total{}"), 0);
  EXPECT_GT(m->at("fedlora_client_received_bytes_total{}"), 0);
  EXPECT_EQ(m->at("fedlora_client_connected{}"), 0);  // The run is over.
  const nlohmann::json status = nlohmann::json::parse(http.Get("/status")->body);
  EXPECT_EQ(status["name"], "alice");
  EXPECT_EQ(status["updates_acknowledged"], 1);
  EXPECT_EQ(http.Get("/readyz")->status, 503);
}

// The training step the worker posts shows in /status and /metrics.
TEST_F(ClientOpsTest, TheTrainingStepShowsInStatusAndMetrics) {
  FakeWorker alice("alice", kDigest);
  ClientSession session(client_, alice, context_, system_clock_);
  TrainingProgressBoard board;
  Result<std::unique_ptr<ops::OpsServer>> endpoint = StartClientOps(client_, session, &board);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  httplib::Client http((*endpoint)->url());
  EXPECT_TRUE(nlohmann::json::parse(http.Get("/status")->body)["training"].is_null());
  board.Update(3, {.step = 12, .total_steps = 30, .loss = 3.2, .tokens = 12000, .seconds = 6});
  const nlohmann::json training = nlohmann::json::parse(http.Get("/status")->body)["training"];
  EXPECT_EQ(training["round"], 3);
  EXPECT_EQ(training["step"], 12);
  EXPECT_EQ(training["total_steps"], 30);
  EXPECT_DOUBLE_EQ(training["tokens_per_s"].get<double>(), 2000.0);
  const Result<std::map<std::string, double>> m =
      fedlora::testing::ParsePrometheusText(http.Get("/metrics")->body);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->at("fedlora_client_training_step{}"), 12);
  EXPECT_EQ(m->at("fedlora_client_training_steps{}"), 30);
}

TEST_F(ClientOpsTest, AClientEndpointOnAPublicAddressIsRefused) {
  FakeWorker alice("alice", kDigest);
  ClientSession session(client_, alice, context_, system_clock_);
  client_.ops.listen = "0.0.0.0:0";
  const Result<std::unique_ptr<ops::OpsServer>> endpoint = StartClientOps(client_, session);
  ASSERT_FALSE(endpoint.ok());
  EXPECT_THAT(endpoint.status().message(), HasSubstr("ops.allow_remote"));
}

}  // namespace
}  // namespace fedlora::client
