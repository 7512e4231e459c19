#include "common/ops/ops_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/net/endpoint.h"

namespace fedlora::ops {

namespace {

// Threads answering requests: scrapes and probes are small and rare.
constexpr std::size_t kServerThreads = 2;

// Compares without an early exit, so a wrong token's timing says nothing of the right one.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::size_t n = std::max(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

Result<std::string> ReadToken(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return NotFound("ops.token_file '", path, "' does not exist");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return PermissionDenied("ops.token_file '", path, "' may be read by group or others (mode ",
                            mode, "); chmod 600 it");
  }
  FEDLORA_ASSIGN_OR_RETURN(std::string token, fs::ReadFile(path));
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  if (token.size() < 16) {
    return InvalidArgument("ops.token_file '", path, "' holds fewer than 16 characters");
  }
  return token;
}

}  // namespace

Status ParseOpsConfig(const config::ConfigSection& section, OpsConfig* out) {
  OpsConfig c;
  FEDLORA_RETURN_IF_ERROR(section.Read("listen", &c.listen));
  FEDLORA_RETURN_IF_ERROR(section.Read("allow_remote", &c.allow_remote));
  FEDLORA_RETURN_IF_ERROR(section.ReadPath("token_file", &c.token_file));
  FEDLORA_RETURN_IF_ERROR(section.ReadPath("tls_cert_file", &c.tls_cert_file));
  FEDLORA_RETURN_IF_ERROR(section.ReadPath("tls_key_file", &c.tls_key_file));
  FEDLORA_RETURN_IF_ERROR(section.Finish());
  if (!c.listen.empty()) {
    Result<HostPort> hp = ParseListen(c.listen);
    if (!hp.ok()) return hp.status();
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return InvalidArgument(section.PathOf("tls_cert_file"), " and ", section.PathOf("tls_key_file"),
                           " go together");
  }
  *out = std::move(c);
  return OkStatus();
}

Result<HostPort> ParseListen(const std::string& listen) {
  // The same "host:port" / "[v6]:port" grammar as a ZeroMQ tcp:// endpoint (common/net).
  const std::optional<net::TcpAddress> address = net::ParseTcpEndpoint(StrCat("tcp://", listen));
  if (!address || address->host.empty()) {
    return InvalidArgument("ops.listen '", listen,
                           "' is not host:port or [IPv6]:port (e.g. 127.0.0.1:9464)");
  }
  char* end = nullptr;
  const long port = std::strtol(address->port.c_str(), &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    return InvalidArgument("ops.listen '", listen, "': port '", address->port, "' is not 0-65535");
  }
  return HostPort{address->host, static_cast<int>(port)};
}

bool IsLoopbackHost(const std::string& host) {
  const bool v6 = host.find(':') != std::string::npos;
  return net::IsLocalEndpoint(StrCat("tcp://", v6 ? "[" : "", host, v6 ? "]" : "", ":0"));
}

class OpsServer::Impl {
 public:
  std::unique_ptr<httplib::Server> server;
  std::thread thread;
  std::atomic<bool> serving_done{false};  // listen_after_bind returned.
  int port = 0;
  std::string url;
  std::string token;
};

OpsServer::OpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

OpsServer::~OpsServer() {
  if (impl_->server && impl_->thread.joinable()) {
    // cpp-httplib's stop() does nothing until the listening loop has begun (is_running), so a
    // server destroyed right after Start would serve forever: wait for the loop (or its end).
    while (!impl_->server->is_running() && !impl_->serving_done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    impl_->server->stop();
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

int OpsServer::port() const { return impl_->port; }
const std::string& OpsServer::url() const { return impl_->url; }

Result<std::unique_ptr<OpsServer>> OpsServer::Start(const OpsConfig& config, const std::string& who,
                                                    Handlers handlers) {
  FEDLORA_ASSIGN_OR_RETURN(const HostPort where, ParseListen(config.listen));
  const bool loopback = IsLoopbackHost(where.host);
  const bool tls = !config.tls_cert_file.empty();
  if (!loopback && !config.allow_remote) {
    return PermissionDenied("ops.listen '", config.listen, "' is not a loopback address: the ", who,
                            "'s metrics and status would be reachable from the network; "
                            "set ops.allow_remote: true to mean it (with ops.token_file and "
                            "ops.tls_cert_file/tls_key_file to protect them)");
  }
  auto impl = std::make_unique<Impl>();
  if (!config.token_file.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(impl->token, ReadToken(config.token_file));
  }
  if (tls) {
    for (const std::string& path : {config.tls_cert_file, config.tls_key_file}) {
      if (::access(path.c_str(), R_OK) != 0) {
        return NotFound("ops TLS file '", path, "' cannot be read");
      }
    }
    auto ssl = std::make_unique<httplib::SSLServer>(config.tls_cert_file.c_str(),
                                                    config.tls_key_file.c_str());
    if (!ssl->is_valid()) {
      return InvalidArgument("ops.tls_cert_file '", config.tls_cert_file,
                             "' and ops.tls_key_file '", config.tls_key_file,
                             "' are not a usable PEM certificate and key");
    }
    impl->server = std::move(ssl);
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  httplib::Server& server = *impl->server;
  server.new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, which would let a second process
  // bind the same port and take a share of the scrapes.
  server.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  const std::string token = impl->token;
  const auto authorized = [token](const httplib::Request& req, httplib::Response& res) {
    if (token.empty()) return true;
    const std::string given = req.get_header_value("Authorization");
    if (given.rfind("Bearer ", 0) == 0 && SameSecret(given.substr(7), token)) return true;
    LogWarn("ops: refused ", req.method, " ", req.path, " from ", req.remote_addr,
            ": no valid bearer token");
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer");
    res.set_content("unauthorized\n", "text/plain");
    return false;
  };
  const auto probe = [](const std::function<Status()>& check, httplib::Response& res) {
    const Status s = check ? check() : OkStatus();
    res.status = s.ok() ? 200 : 503;
    res.set_content(s.ok() ? std::string("ok\n") : s.message() + "\n", "text/plain");
  };
  server.Get("/metrics", [h = handlers.metrics, authorized](const httplib::Request& req,
                                                            httplib::Response& res) {
    if (!authorized(req, res)) return;
    res.set_content(h ? h() : std::string(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/status", [h = handlers.status_json, authorized](const httplib::Request& req,
                                                               httplib::Response& res) {
    if (!authorized(req, res)) return;
    res.set_content(h ? h() : std::string("{}"), "application/json");
  });
  server.Get("/healthz", [h = handlers.health, probe](const httplib::Request&,
                                                      httplib::Response& res) { probe(h, res); });
  server.Get("/readyz", [h = handlers.ready, probe](const httplib::Request&,
                                                    httplib::Response& res) { probe(h, res); });
  if (where.port == 0) {
    impl->port = server.bind_to_any_port(where.host);
  } else {
    impl->port = server.bind_to_port(where.host, where.port) ? where.port : -1;
  }
  if (impl->port <= 0) {
    return Unavailable("ops.listen '", config.listen,
                       "' cannot be bound (in use, or not an "
                       "address of this machine)");
  }
  const bool v6 = where.host.find(':') != std::string::npos;
  impl->url = StrCat(tls ? "https://" : "http://", v6 ? "[" : "", where.host, v6 ? "]" : "", ":",
                     impl->port);
  impl->thread = std::thread([&server, done = &impl->serving_done] {
    server.listen_after_bind();
    done->store(true);
  });
  LogInfo(who, " ops endpoint on ", impl->url, " (/metrics, /status, /healthz, /readyz)",
          impl->token.empty() ? "" : "; bearer token required for /metrics and /status");
  if (!loopback) {
    LogWarn(who, " ops endpoint ", impl->url, " is reachable from the network (ops.allow_remote)",
            impl->token.empty() ? ": anyone who can reach it reads the metrics and status" : "",
            tls ? "" : "; plain HTTP: what it serves travels unencrypted");
  }
  return std::unique_ptr<OpsServer>(new OpsServer(std::move(impl)));
}

}  // namespace fedlora::ops
