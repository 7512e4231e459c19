// zmtp_probe.h — asks a ZeroMQ endpoint which security mechanism it speaks, without ZeroMQ.
//
// When a CURVE handshake fails, libzmq often reports only "the peer closed the connection", which
// does not tell a wrong pinned server key from a server that speaks plaintext. The ZMTP 3 greeting
// (the first 64 bytes each side sends) names the mechanism in clear, so reading the server's
// greeting over a plain socket tells them apart. Used for diagnostics only, after a failure.
#pragma once

#include <chrono>
#include <string>

#include "common/status.h"

namespace fedlora::net {

// Connects to `endpoint` (tcp:// or ipc://), sends the start of a ZMTP 3 greeting and returns the
// mechanism named in the server's greeting ("NULL", "PLAIN", "CURVE"), then closes. kUnavailable
// when nothing answers within `timeout`, kInvalidArgument for other transports, kDataLoss when
// the peer does not speak ZMTP 3.
Result<std::string> ProbeZmtpMechanism(const std::string& endpoint,
                                       std::chrono::milliseconds timeout);

}  // namespace fedlora::net
