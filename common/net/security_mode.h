// security_mode.h — the one rule that decides whether a connection uses CURVE.
//
// Secure by default: an endpoint that reaches beyond this machine uses CURVE unless the operator
// explicitly opts out (allow_insecure), and then every start logs a warning. Shared by the
// coordinator (its bind address) and the client (the coordinator's address).
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fedlora::net {

enum class SecurityMode { kNone, kCurve };
std::string_view SecurityModeName(SecurityMode mode);  // "none", "curve"

struct SecurityChoice {
  std::string_view mode;          // "auto", "curve" or "none" (the config value).
  std::string_view endpoint;      // The bind (coordinator) or connect (client) endpoint.
  bool keys_configured = false;   // The config names CURVE keys.
  bool allow_insecure = false;
  std::string_view section;       // "security" or "client.security", for messages.
};

// auto: CURVE when the endpoint is not local (net::IsLocalEndpoint) or keys are configured, else
// none. kInvalidArgument for plaintext on a non-local endpoint without allow_insecure (the message
// says how to fix it), for CURVE on inproc:// (which has no handshake), and unknown modes.
Result<SecurityMode> ResolveSecurityMode(const SecurityChoice& choice);

// True when `choice` resolved to none on a non-local endpoint: the caller logs a warning.
bool IsInsecureOptOut(const SecurityChoice& choice, SecurityMode resolved);

}  // namespace fedlora::net
