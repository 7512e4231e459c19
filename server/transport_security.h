// transport_security.h — the coordinator's side of CURVE: its key pair, the enrolled clients, the
// ZAP handler that admits only their keys, and reloading the enrolment list.
//
// With CURVE every connection is encrypted and authenticated; during the handshake the ZAP
// handler (on ZeroMQ's ZAP thread) refuses keys that are not in security.authorized_clients, and
// stamps each admitted connection with its key (Z85) as the ZAP User-Id, which arrives with every
// message. The coordinator then checks, per message, that the key is still enrolled and enrolled
// under the client name the session uses (NamesFor).
//
// Threading: created and reloaded on the coordinator's loop thread; the ZAP handler reads the
// current list under a mutex, and its counters are atomics.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/crypto/curve_keys.h"
#include "common/net/security_mode.h"
#include "common/net/zmq_transport.h"
#include "common/status.h"
#include "server/authorized_clients.h"
#include "server/config.h"

namespace fedlora::server {

// What a reload found.
struct KeyListChange {
  bool reloaded = false;  // The list was read again and differs from the previous one.
  Status error;           // Not OK: the file could not be read or parsed; the old list stays.
};

class TransportSecurity {
 public:
  // Resolves the mode for `bind` (net::ResolveSecurityMode); with CURVE, loads the key pair
  // (refusing a secret key file others may read) and the enrolled clients. Errors name the key
  // and the file at fault.
  static Result<std::unique_ptr<TransportSecurity>> Create(const SecurityConfig& config,
                                                           const std::string& bind);
  ~TransportSecurity();

  net::SecurityMode mode() const { return mode_; }
  bool curve() const { return mode_ == net::SecurityMode::kCurve; }
  // Warns (every start) when running without CURVE on a non-local bind.
  void LogStartup() const;

  // CURVE: serves the ZAP handler in `context` and sets `options` for a CURVE server socket.
  // Call before binding. No-op without CURVE.
  Status Attach(net::Context& context, net::SocketOptions* options);

  // Reads the list again when `force` (SIGHUP), or when the file changed (inode, size or time).
  // No-op without CURVE.
  KeyListChange Reload(bool force);

  // The names a connection with this ZAP User-Id (a Z85 key) may use; empty when the key is not
  // (or no longer) enrolled.
  std::vector<std::string> NamesFor(std::string_view user_id) const;
  bool Allows(std::string_view user_id, std::string_view name) const;
  // "key SHA256:xxxx-..." for log lines and errors about `user_id`.
  static std::string Describe(std::string_view user_id);

  std::uint64_t handshakes_denied() const { return denied_.load(std::memory_order_relaxed); }
  std::size_t enrolled() const;
  const crypto::CurvePublicKey& public_key() const { return keys_->public_key; }

 private:
  TransportSecurity() = default;
  net::ZapVerdict Authenticate(const net::ZapRequest& request);
  struct FileSignature {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = -1;
    std::int64_t mtime_ns = 0;
    friend bool operator==(const FileSignature&, const FileSignature&) = default;
  };
  static FileSignature SignatureOf(const std::string& path);

  SecurityConfig config_;
  net::SecurityMode mode_ = net::SecurityMode::kNone;
  std::string bind_;
  std::shared_ptr<const crypto::CurveKeyPair> keys_;
  std::string zap_domain_;
  net::ZapRegistration zap_;  // Destroyed first among these: no handler runs after it.
  FileSignature signature_;

  mutable std::mutex mu_;
  std::shared_ptr<const AuthorizedClients> clients_;  // Guarded by mu_.
  // Denials logged per key: first one, then at most one line a minute with the count.
  std::map<std::string, std::pair<std::int64_t, std::uint64_t>> denial_log_;  // Guarded by mu_.
  std::atomic<std::uint64_t> denied_{0};
};

}  // namespace fedlora::server
