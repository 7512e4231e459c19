// hand_driven_coordinator.h — a coordinator driven by hand for client session tests: a ROUTER
// bound at an endpoint that the test reads and answers message by message.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <utility>

#include "common/net/zmq_transport.h"
#include "common/wire/codec.h"

namespace fedlora::testing {

class HandDrivenCoordinator {
 public:
  HandDrivenCoordinator(net::Context& context, const std::string& endpoint)
      : router_(net::Socket::Open(context, net::SocketKind::kRouter).value()) {
    EXPECT_TRUE(router_.Bind(endpoint).ok());
  }
  // The next message (bounded wait) with the route it came from.
  std::pair<std::string, wire::Envelope> Receive() {
    Result<std::optional<net::Message>> m = router_.Receive(std::chrono::seconds(30));
    EXPECT_TRUE(m.ok() && m->has_value());
    const std::span<const std::byte> id = (*m)->frame(0);
    return {std::string(reinterpret_cast<const char*>(id.data()), id.size()),
            wire::Decode((*m)->frames(1), {}).value()};
  }
  void Send(const std::string& route, std::uint64_t session_id, wire::Body body) {
    const wire::Envelope env{wire::kProtocolVersion, session_id, ++sequence_, std::move(body)};
    const wire::EncodedMessage m = wire::Encode(env);
    EXPECT_TRUE(router_.Send(m.frames(), std::as_bytes(std::span<const char>(route))).ok());
  }

 private:
  net::Socket router_;
  std::uint64_t sequence_ = 0;
};

}  // namespace fedlora::testing
