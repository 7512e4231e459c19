#include "common/net/endpoint.h"

#include <arpa/inet.h>

namespace fedlora::net {

std::optional<TcpAddress> ParseTcpEndpoint(std::string_view endpoint) {
  if (!endpoint.starts_with("tcp://")) return std::nullopt;
  std::string_view rest = endpoint.substr(6);
  // ZeroMQ allows "tcp://source;destination" on connect: the destination is what we reach.
  if (const std::size_t semi = rest.rfind(';'); semi != std::string_view::npos) {
    rest = rest.substr(semi + 1);
  }
  const std::size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == rest.size()) {
    return std::nullopt;
  }
  std::string_view host = rest.substr(0, colon);
  if (host.starts_with('[')) {
    if (!host.ends_with(']') || host.size() < 3) return std::nullopt;
    host = host.substr(1, host.size() - 2);
  }
  return TcpAddress{std::string(host), std::string(rest.substr(colon + 1))};
}

bool IsLocalEndpoint(std::string_view endpoint) {
  if (endpoint.starts_with("inproc://") || endpoint.starts_with("ipc://")) return true;
  const std::optional<TcpAddress> tcp = ParseTcpEndpoint(endpoint);
  if (!tcp) return false;
  const std::string& h = tcp->host;
  if (h == "localhost") return true;
  // Only literal addresses count: a name such as "127.0.0.1.example.com" resolves anywhere.
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, h.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

}  // namespace fedlora::net
