// tcp_tap.h — a TCP forwarder for tests that records every byte crossing it, to check what an
// eavesdropper on the network would see. Listens on 127.0.0.1 (an ephemeral port), connects each
// accepted connection to `target`, and forwards both ways on one thread until destroyed.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/net/endpoint.h"

namespace fedlora::testing {

class TcpTap {
 public:
  // `target`: "tcp://127.0.0.1:PORT".
  explicit TcpTap(const std::string& target) {
    const auto address = net::ParseTcpEndpoint(target).value();
    target_.sin_family = AF_INET;
    target_.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.port)));
    inet_pton(AF_INET, address.host.c_str(), &target_.sin_addr);
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&any), sizeof(any));
    ::listen(listener_, 16);
    socklen_t len = sizeof(any);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&any), &len);
    endpoint_ = "tcp://127.0.0.1:" + std::to_string(ntohs(any.sin_port));
    if (::pipe(stop_pipe_) != 0) std::abort();
    thread_ = std::thread([this] { Loop(); });
  }
  ~TcpTap() {
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_pipe_[1], &c, 1);
    thread_.join();
    for (const auto& [a, b] : pairs_) {
      ::close(a);
      ::close(b);
    }
    ::close(listener_);
    ::close(stop_pipe_[0]);
    ::close(stop_pipe_[1]);
  }
  TcpTap(const TcpTap&) = delete;
  TcpTap& operator=(const TcpTap&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  // Every byte forwarded so far, both directions, in arrival order.
  std::string Captured() const {
    std::lock_guard<std::mutex> lock(mu_);
    return captured_;
  }
  // Whether `pattern` occurs in the captured bytes.
  bool Saw(std::string_view pattern) const {
    const std::string all = Captured();
    return std::search(all.begin(), all.end(), pattern.begin(), pattern.end()) != all.end();
  }

 private:
  void Loop() {
    std::vector<char> buf(1 << 16);
    while (true) {
      std::vector<pollfd> fds = {{stop_pipe_[0], POLLIN, 0}, {listener_, POLLIN, 0}};
      for (const auto& [a, b] : pairs_) {
        fds.push_back({a, POLLIN, 0});
        fds.push_back({b, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) {
        const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (client >= 0 && ::connect(server, reinterpret_cast<sockaddr*>(&target_),
                                     sizeof(target_)) == 0) {
          pairs_.emplace_back(client, server);
        } else {
          if (client >= 0) ::close(client);
          ::close(server);
        }
        continue;
      }
      for (std::size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        auto& pair = pairs_[(i - 2) / 2];
        const int from = fds[i].fd, to = from == pair.first ? pair.second : pair.first;
        const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
        if (n <= 0) {  // One side closed: close both; the peers reconnect through the tap.
          ::close(pair.first);
          ::close(pair.second);
          pairs_.erase(pairs_.begin() + static_cast<std::ptrdiff_t>((i - 2) / 2));
          break;
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          captured_.append(buf.data(), static_cast<std::size_t>(n));
        }
        for (ssize_t sent = 0; sent < n;) {
          const ssize_t m = ::send(to, buf.data() + sent, static_cast<std::size_t>(n - sent),
                                   MSG_NOSIGNAL);
          if (m <= 0) break;
          sent += m;
        }
      }
    }
  }

  sockaddr_in target_{};
  int listener_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::string endpoint_;
  std::vector<std::pair<int, int>> pairs_;  // Loop thread only (and the destructor after join).
  mutable std::mutex mu_;
  std::string captured_;  // Guarded by mu_.
  std::thread thread_;
};

}  // namespace fedlora::testing
