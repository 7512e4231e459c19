#include "common/net/zmtp_probe.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "common/net/endpoint.h"
#include "common/unique_fd.h"

namespace fedlora::net {
namespace {

constexpr std::size_t kGreetingBytes = 64;

// Waits for `events` on `fd` until `deadline`; false on timeout or error.
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno == EINTR) continue;
    return rc > 0 && (p.revents & events) != 0;
  }
}

Result<int> ConnectTcp(const TcpAddress& address, std::chrono::steady_clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(address.host.c_str(), address.port.c_str(), &hints, &found);
      rc != 0) {
    return Unavailable("resolving ", address.host, ": ", gai_strerror(rc));
  }
  Status last = Unavailable("no address for ", address.host);
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
        (errno == EINPROGRESS && WaitFor(fd, POLLOUT, deadline))) {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        ::freeaddrinfo(found);
        return fd;
      }
      last = Unavailable("connect: ", std::strerror(err));
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return last;
}

Result<int> ConnectIpc(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return InvalidArgument("ipc path too long: ", path);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Unavailable("socket: ", std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return Unavailable("connect ", path, ": ", std::strerror(err));
  }
  return fd;
}

}  // namespace

Result<std::string> ProbeZmtpMechanism(const std::string& endpoint,
                                       std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Result<int> connected = Status(StatusCode::kInvalidArgument, "");
  if (const std::optional<TcpAddress> tcp = ParseTcpEndpoint(endpoint)) {
    connected = ConnectTcp(*tcp, deadline);
  } else if (endpoint.starts_with("ipc://")) {
    connected = ConnectIpc(endpoint.substr(6));
  } else {
    return InvalidArgument("cannot probe '", endpoint, "' (tcp:// and ipc:// only)");
  }
  if (!connected.ok()) return connected.status();
  UniqueFd fd(*connected);

  // The first 11 bytes of a ZMTP 3 greeting: the signature (0xFF, 8 padding bytes, 0x7F) and major
  // version 3. That is all a ZeroMQ peer needs to send its whole greeting; sending our mechanism
  // too would let a peer that dislikes it close the connection before its greeting is out.
  std::array<unsigned char, 11> greeting{};
  greeting[0] = 0xFF;
  greeting[9] = 0x7F;
  greeting[10] = 3;
  std::size_t sent = 0;
  while (sent < greeting.size()) {
    if (!WaitFor(fd.get(), POLLOUT, deadline)) return Unavailable("no answer from ", endpoint);
    const ssize_t n = ::send(fd.get(), greeting.data() + sent, greeting.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return Unavailable("sending to ", endpoint, ": ", std::strerror(errno));
    sent += static_cast<std::size_t>(n);
  }
  std::array<unsigned char, kGreetingBytes> reply{};
  std::size_t got = 0;
  while (got < reply.size()) {
    if (!WaitFor(fd.get(), POLLIN, deadline)) return Unavailable("no greeting from ", endpoint);
    const ssize_t n = ::recv(fd.get(), reply.data() + got, reply.size() - got, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got < 12 || reply[0] != 0xFF || reply[9] != 0x7F) {
    return DataLoss(endpoint, " does not speak ZMTP (no ZeroMQ greeting)");
  }
  if (reply[10] < 3 || got < 32) {
    return DataLoss(endpoint, " speaks ZMTP ", static_cast<int>(reply[10]), ".",
                    static_cast<int>(reply[11]), ", which has no security mechanisms");
  }
  std::string mechanism(reinterpret_cast<const char*>(&reply[12]), 20);
  mechanism.resize(std::strlen(mechanism.c_str()));
  return mechanism;
}

}  // namespace fedlora::net
