// ops_server.h — the HTTP endpoint an operator scrapes and probes: /metrics (Prometheus text),
// /healthz, /readyz and /status (JSON), served by cpp-httplib on a thread of its own.
//
// Secure by default: off unless `listen` is set; a host other than loopback is refused unless
// the operator opts in with `allow_remote` (logged as a warning at every start, saying what is
// unprotected), and with `tls_cert_file`/`tls_key_file` it speaks HTTPS. With `token_file`,
// /metrics and /status require "Authorization: Bearer <token>" (Prometheus' bearer_token_file);
// the probes never do, and say nothing but "ok" or why not.
//
// Torch-free. The handlers run on the server's threads: they must be thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/config/yaml_config.h"
#include "common/status.h"

namespace fedlora::ops {

// The `ops` section of the coordinator's and the client's configuration.
struct OpsConfig {
  std::string listen;         // "127.0.0.1:9464", "[::1]:9464", "localhost:0"; empty = off.
  bool allow_remote = false;  // Required for a host that is not loopback.
  std::string token_file;     // Bearer token for /metrics and /status; empty = none.
  std::string tls_cert_file;  // PEM certificate (chain) and key: HTTPS; empty = plain HTTP.
  std::string tls_key_file;
};

// Reads the `ops` section (absent: off). Paths resolve against the file. Errors name the key.
Status ParseOpsConfig(const config::ConfigSection& section, OpsConfig* out);

// Host and port of `listen` ("host:port", "[v6]:port"). kInvalidArgument naming ops.listen.
struct HostPort {
  std::string host;
  int port = 0;
};
Result<HostPort> ParseListen(const std::string& listen);
// 127.0.0.0/8, ::1 and "localhost" (literal addresses only, as net::IsLocalEndpoint).
bool IsLoopbackHost(const std::string& host);

class OpsServer {
 public:
  struct Handlers {
    std::function<std::string()> metrics;      // Prometheus text.
    std::function<Status()> health;            // OK: alive (the daemon's loop is turning).
    std::function<Status()> ready;             // OK: ready for work.
    std::function<std::string()> status_json;  // One JSON object.
  };

  // Binds `config.listen` and serves on a thread of its own. `who` names the daemon in logs
  // ("coordinator"). Errors: a remote host without allow_remote, an unreadable token or TLS file,
  // or an address that cannot be bound — each naming the ops.* key.
  static Result<std::unique_ptr<OpsServer>> Start(const OpsConfig& config, const std::string& who,
                                                  Handlers handlers);
  ~OpsServer();  // Stops serving and joins the thread.
  OpsServer(const OpsServer&) = delete;
  OpsServer& operator=(const OpsServer&) = delete;

  int port() const;                // The bound port (listen ":0" picks one).
  const std::string& url() const;  // "http://127.0.0.1:9464"

 private:
  class Impl;
  explicit OpsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::ops
