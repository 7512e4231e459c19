// endpoint.h — what a ZeroMQ endpoint string says about reachability.
//
// Security defaults depend on it: a coordinator bound to (or a client connecting to) anything
// beyond this machine must use CURVE unless the operator explicitly opts out.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace fedlora::net {

// True for inproc:// and ipc:// endpoints and for tcp:// on a loopback address (127.0.0.0/8,
// ::1, localhost). A wildcard (tcp://*:5555), an interface name or any other address is not.
bool IsLocalEndpoint(std::string_view endpoint);

// "tcp://host:port" (host may be a name, an IPv4 address or [IPv6]) split into its parts.
struct TcpAddress {
  std::string host;  // Without brackets.
  std::string port;
};
std::optional<TcpAddress> ParseTcpEndpoint(std::string_view endpoint);

}  // namespace fedlora::net
