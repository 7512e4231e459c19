#include "common/net/security_mode.h"

#include "common/net/endpoint.h"

namespace fedlora::net {

std::string_view SecurityModeName(SecurityMode mode) {
  return mode == SecurityMode::kCurve ? "curve" : "none";
}

Result<SecurityMode> ResolveSecurityMode(const SecurityChoice& c) {
  const bool local = IsLocalEndpoint(c.endpoint);
  SecurityMode mode;
  if (c.mode == "curve") {
    mode = SecurityMode::kCurve;
  } else if (c.mode == "none") {
    mode = SecurityMode::kNone;
  } else if (c.mode == "auto") {
    mode = !local || c.keys_configured ? SecurityMode::kCurve : SecurityMode::kNone;
  } else {
    return InvalidArgument(c.section, ".mode: '", c.mode, "' is not auto, curve or none");
  }
  if (mode == SecurityMode::kCurve && c.endpoint.starts_with("inproc://")) {
    return InvalidArgument(c.section, ".mode is curve, but ", c.endpoint,
                           " is in-process: CURVE applies to tcp:// and ipc:// only (use mode: "
                           "none, or a tcp:// endpoint)");
  }
  if (mode == SecurityMode::kNone && !local && !c.allow_insecure) {
    return InvalidArgument(
        c.section, ".mode is none on ", c.endpoint,
        ", which other machines can reach: every tensor would cross the network in clear text "
        "and anyone could join. Configure CURVE keys (",
        c.section, ".secret_key_file and the peer's key; docs/security.md), bind to loopback, or "
        "set ", c.section, ".allow_insecure: true to accept that risk");
  }
  return mode;
}

bool IsInsecureOptOut(const SecurityChoice& c, SecurityMode resolved) {
  return resolved == SecurityMode::kNone && !IsLocalEndpoint(c.endpoint);
}

}  // namespace fedlora::net
