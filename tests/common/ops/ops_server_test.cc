#include "common/ops/ops_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

namespace fedlora::ops {
namespace {

using ::testing::HasSubstr;

OpsServer::Handlers Fixed(std::atomic<bool>* ready) {
  OpsServer::Handlers h;
  h.metrics = [] { return std::string("# TYPE x gauge\nx 1\n"); };
  h.status_json = [] { return std::string("{\"phase\":\"fit\"}\n"); };
  h.health = [] { return OkStatus(); };
  h.ready = [ready] { return ready->load() ? OkStatus() : Unavailable("waiting for round 0"); };
  return h;
}

std::string WriteToken(const std::string& name, const std::string& token, mode_t mode) {
  const std::string path = ::testing::TempDir() + "/" + name + "_" + std::to_string(::getpid());
  std::ofstream(path) << token << "\n";
  ::chmod(path.c_str(), mode);
  return path;
}

TEST(OpsServerTest, ServesMetricsStatusAndProbesOnLoopback) {
  std::atomic<bool> ready{false};
  const Result<std::unique_ptr<OpsServer>> server =
      OpsServer::Start({.listen = "127.0.0.1:0"}, "test", Fixed(&ready));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->url(), "http://127.0.0.1:" + std::to_string((*server)->port()));
  httplib::Client client("127.0.0.1", (*server)->port());
  const auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->body, "# TYPE x gauge\nx 1\n");
  EXPECT_THAT(metrics->get_header_value("Content-Type"), HasSubstr("version=0.0.4"));
  const auto status = client.Get("/status");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->body, "{\"phase\":\"fit\"}\n");
  EXPECT_EQ(client.Get("/healthz")->status, 200);
  const auto not_ready = client.Get("/readyz");
  EXPECT_EQ(not_ready->status, 503);
  EXPECT_EQ(not_ready->body, "waiting for round 0\n");
  ready = true;
  EXPECT_EQ(client.Get("/readyz")->status, 200);
  EXPECT_EQ(client.Get("/nothing")->status, 404);
}

// A scraper without the token learns nothing but 401; probes stay open for the orchestrator.
TEST(OpsServerTest, ABearerTokenGuardsMetricsAndStatusButNotTheProbes) {
  const std::string token = "0123456789abcdef-secret";
  const std::string path = WriteToken("ops_token_ok", token, 0600);
  std::atomic<bool> ready{true};
  const Result<std::unique_ptr<OpsServer>> server =
      OpsServer::Start({.listen = "127.0.0.1:0", .token_file = path}, "test", Fixed(&ready));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  httplib::Client client("127.0.0.1", (*server)->port());
  EXPECT_EQ(client.Get("/metrics")->status, 401);
  EXPECT_EQ(client.Get("/status")->status, 401);
  EXPECT_EQ(
      client.Get("/metrics", {{"Authorization", "Bearer wrong-token-of-some-length"}})->status,
      401);
  const auto ok = client.Get("/metrics", {{"Authorization", "Bearer " + token}});
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->body, "# TYPE x gauge\nx 1\n");
  EXPECT_EQ(client.Get("/healthz")->status, 200);
  EXPECT_EQ(client.Get("/readyz")->status, 200);
  std::filesystem::remove(path);
}

TEST(OpsServerTest, ATokenFileOthersMayReadOrTooShortIsRefused) {
  std::atomic<bool> ready{true};
  const std::string open = WriteToken("ops_token_open", "0123456789abcdef-secret", 0644);
  const Result<std::unique_ptr<OpsServer>> readable =
      OpsServer::Start({.listen = "127.0.0.1:0", .token_file = open}, "test", Fixed(&ready));
  ASSERT_FALSE(readable.ok());
  EXPECT_EQ(readable.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(readable.status().message(), HasSubstr("ops.token_file"));
  const std::string short_token = WriteToken("ops_token_short", "abc", 0600);
  EXPECT_FALSE(
      OpsServer::Start({.listen = "127.0.0.1:0", .token_file = short_token}, "test", Fixed(&ready))
          .ok());
  std::filesystem::remove(open);
  std::filesystem::remove(short_token);
}

// Secure by default: an address other than loopback is refused unless the operator says so.
TEST(OpsServerTest, ANonLoopbackAddressNeedsAllowRemote) {
  std::atomic<bool> ready{true};
  const Result<std::unique_ptr<OpsServer>> refused =
      OpsServer::Start({.listen = "0.0.0.0:0"}, "coordinator", Fixed(&ready));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("ops.allow_remote"));
  const Result<std::unique_ptr<OpsServer>> allowed =
      OpsServer::Start({.listen = "0.0.0.0:0", .allow_remote = true}, "coordinator", Fixed(&ready));
  ASSERT_TRUE(allowed.ok()) << allowed.status().ToString();
  httplib::Client client("127.0.0.1", (*allowed)->port());
  EXPECT_EQ(client.Get("/healthz")->status, 200);
}

TEST(OpsServerTest, AnAddressInUseIsAnErrorNamingOpsListen) {
  std::atomic<bool> ready{true};
  const Result<std::unique_ptr<OpsServer>> first =
      OpsServer::Start({.listen = "127.0.0.1:0"}, "test", Fixed(&ready));
  ASSERT_TRUE(first.ok());
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  const Result<std::unique_ptr<OpsServer>> second =
      OpsServer::Start({.listen = taken}, "test", Fixed(&ready));
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr("ops.listen '" + taken + "'"));
}

TEST(OpsServerTest, ListenAddressesParse) {
  EXPECT_EQ(ParseListen("127.0.0.1:9464")->host, "127.0.0.1");
  EXPECT_EQ(ParseListen("127.0.0.1:9464")->port, 9464);
  EXPECT_EQ(ParseListen("[::1]:80")->host, "::1");
  EXPECT_EQ(ParseListen("localhost:0")->port, 0);
  for (const char* bad : {"9464", ":9464", "host:", "host:70000", "host:x", "[::1]9464"}) {
    EXPECT_FALSE(ParseListen(bad).ok()) << bad;
  }
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_FALSE(IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(IsLoopbackHost("10.0.0.5"));
  EXPECT_FALSE(IsLoopbackHost("127.0.0.1.example.com"));  // A name, resolvable anywhere.
}

}  // namespace
}  // namespace fedlora::ops
