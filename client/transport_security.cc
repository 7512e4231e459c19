#include "client/transport_security.h"

#include "common/log.h"
#include "common/net/zmtp_probe.h"

namespace fedlora::client {
namespace {

constexpr std::chrono::milliseconds kProbeTimeout{3000};

}  // namespace

std::optional<net::CurveOptions> ClientTransportSecurity::SocketOptions() const {
  if (!curve()) return std::nullopt;
  return net::CurveOptions{keys, coordinator_key, ""};
}

Result<ClientTransportSecurity> ResolveClientSecurity(const ClientConfig& config) {
  const ClientSecurityConfig& c = config.security;
  const bool pinned = !c.coordinator_public_key.empty() || !c.coordinator_public_key_file.empty();
  const net::SecurityChoice choice{c.mode, config.coordinator, pinned, c.allow_insecure,
                                   "security"};
  ClientTransportSecurity out;
  FEDLORA_ASSIGN_OR_RETURN(out.mode, net::ResolveSecurityMode(choice));
  out.insecure_opt_out = net::IsInsecureOptOut(choice, out.mode);
  if (!out.curve()) return out;
  if (!pinned) {
    return InvalidArgument("security: CURVE (mode ", c.mode, ", coordinator ", config.coordinator,
                           ") needs the coordinator's public key: security.coordinator_public_key "
                           "(as `fedlora-coordinator keygen` prints it) or "
                           "security.coordinator_public_key_file (the .key file it writes)");
  }
  if (c.secret_key_file.empty()) {
    return InvalidArgument("security: CURVE needs security.secret_key_file: this client's key "
                           "pair; create it with `fedlora-client keygen --name ", config.name,
                           "` and send the operator the line it prints");
  }
  Result<crypto::CurvePublicKey> pin =
      !c.coordinator_public_key.empty()
          ? crypto::ParseCurvePublicKey(c.coordinator_public_key, "security.coordinator_public_key")
          : crypto::LoadPublicKeyFile(c.coordinator_public_key_file);
  if (!pin.ok()) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat(c.coordinator_public_key.empty() ? "security.coordinator_public_key_file: "
                                                          : "",
                         pin.status().message()));
  }
  out.coordinator_key = *pin;
  Result<crypto::CurveKeyPair> keys = crypto::LoadSecretKeyFile(c.secret_key_file);
  if (!keys.ok()) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat("security.secret_key_file: ", keys.status().message()));
  }
  out.keys = std::make_shared<const crypto::CurveKeyPair>(std::move(keys).value());
  return out;
}

void LogClientSecurity(const ClientConfig& config, const ClientTransportSecurity& security) {
  if (security.curve()) {
    LogInfo("security: CURVE to ", config.coordinator, "; client key ",
            security.keys->public_key.Fingerprint(), ", pinned coordinator key ",
            security.coordinator_key.Fingerprint());
  } else if (security.insecure_opt_out) {
    LogWarn("security: INSECURE: plaintext to ", config.coordinator,
            " (security.allow_insecure: true): adapters travel in clear text and the coordinator "
            "is not verified");
  }
}

HandshakeWatch::HandshakeWatch(const ClientTransportSecurity& security, std::string endpoint)
    : security_(security), endpoint_(std::move(endpoint)) {}

std::optional<Status> HandshakeWatch::OnEvent(const net::MonitorEvent& event) {
  using K = net::MonitorEventKind;
  switch (event.kind) {
    case K::kHandshakeSucceeded: failed_handshakes_ = 0; return std::nullopt;
    case K::kHandshakeFailedAuth: ++failed_handshakes_; return Diagnose(event);
    case K::kHandshakeFailedProtocol:
    case K::kHandshakeFailedNoDetail:
      ++failed_handshakes_;
      if (event.mechanism_mismatch() || failed_handshakes_ >= kMaxFailedHandshakes) {
        return Diagnose(event);
      }
      return std::nullopt;
    default: return std::nullopt;
  }
}

Status HandshakeWatch::Diagnose(const net::MonitorEvent& event) const {
  if (event.kind == net::MonitorEventKind::kHandshakeFailedAuth) {
    return PermissionDenied(
        "the coordinator at ", endpoint_, " refused this client's key ",
        security_.keys->public_key.Fingerprint(), " (ZAP status ", event.value,
        "): it is not enrolled in the coordinator's authorized_clients, or was revoked. Send the "
        "operator your name and public key (`fedlora-client keygen` printed them) for "
        "`fedlora-coordinator clients add`");
  }
  const Result<std::string> mechanism = net::ProbeZmtpMechanism(endpoint_, kProbeTimeout);
  const std::string attempts =
      StrCat(failed_handshakes_, " handshake(s) failed, last: ", net::MonitorEventName(event.kind));
  if (security_.curve()) {
    if (mechanism.ok() && *mechanism != "CURVE") {
      return Unauthenticated(
          "the coordinator at ", endpoint_, " does not use CURVE (it offers the ", *mechanism,
          " mechanism, i.e. plaintext): this client will not send its adapters in clear text to "
          "a coordinator it cannot verify. If that coordinator is meant to run without security, "
          "set security.mode: none (and security.allow_insecure: true for a remote address)");
    }
    if (mechanism.ok()) {
      return Unauthenticated(
          "the coordinator at ", endpoint_, " closed every CURVE handshake (", attempts,
          "): security.coordinator_public_key (", security_.coordinator_key.Fingerprint(),
          ") is most likely not its key. Compare that fingerprint with the one the operator's "
          "coordinator logs at start");
    }
    return Unauthenticated("CURVE handshake with ", endpoint_, " failed (", attempts,
                           "), and asking it for its mechanism failed too: ",
                           mechanism.status().message());
  }
  if (mechanism.ok() && *mechanism == "CURVE") {
    return Unauthenticated(
        "the coordinator at ", endpoint_, " requires CURVE: set security.coordinator_public_key "
        "(the coordinator's public key) and security.secret_key_file (this client's key pair, "
        "from `fedlora-client keygen`, enrolled by the operator); docs/security.md");
  }
  return Unauthenticated("handshake with ", endpoint_, " failed (", attempts, ")",
                         mechanism.ok() ? StrCat("; it offers the ", *mechanism, " mechanism")
                                        : StrCat("; ", mechanism.status().message()));
}

}  // namespace fedlora::client
