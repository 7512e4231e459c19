// transport_security.h — the client's side of CURVE: its resolved mode and keys, and turning
// failed handshakes into an error that says which side is wrong.
//
// libzmq retries a failed handshake forever and, on the client side, often reports no more than
// "the peer closed the connection". HandshakeWatch reads the socket monitor's events and, once a
// connection can never work (the coordinator refused our key; it speaks another mechanism; it
// closes every CURVE handshake, i.e. our pinned key is not its key), returns a final Status. To
// tell the last two apart it asks the endpoint for its ZMTP greeting (net::ProbeZmtpMechanism).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "client/config.h"
#include "common/crypto/curve_keys.h"
#include "common/net/security_mode.h"
#include "common/net/zmq_transport.h"
#include "common/status.h"

namespace fedlora::client {

struct ClientTransportSecurity {
  net::SecurityMode mode = net::SecurityMode::kNone;
  std::shared_ptr<const crypto::CurveKeyPair> keys;  // CURVE only.
  crypto::CurvePublicKey coordinator_key;            // CURVE only: pinned.
  bool insecure_opt_out = false;  // Plaintext to a non-local coordinator (allow_insecure).

  bool curve() const { return mode == net::SecurityMode::kCurve; }
  // The DEALER's CURVE options; nullopt for plaintext.
  std::optional<net::CurveOptions> SocketOptions() const;
};

// Resolves the mode for config.coordinator and, with CURVE, loads the key pair (refusing a
// secret key file others may read) and the pinned coordinator key. Every error is
// kInvalidArgument naming the key or file (a configuration problem).
Result<ClientTransportSecurity> ResolveClientSecurity(const ClientConfig& config);

// One line at start: CURVE with both fingerprints, or a warning for an insecure opt-out.
void LogClientSecurity(const ClientConfig& config, const ClientTransportSecurity& security);

class HandshakeWatch {
 public:
  // Failed handshakes (the coordinator closing the connection) before we give up: a coordinator
  // restarting mid-handshake is rare, a wrong pinned key fails every time.
  static constexpr int kMaxFailedHandshakes = 3;

  HandshakeWatch(const ClientTransportSecurity& security, std::string endpoint);

  // Feeds one monitor event. A final error when the connection can never work:
  // kPermissionDenied when the coordinator refused our key; kUnauthenticated when the
  // coordinator could not be verified or speaks another security mechanism.
  std::optional<Status> OnEvent(const net::MonitorEvent& event);

 private:
  Status Diagnose(const net::MonitorEvent& event) const;

  const ClientTransportSecurity& security_;
  std::string endpoint_;
  int failed_handshakes_ = 0;  // Since the last successful handshake.
};

}  // namespace fedlora::client
