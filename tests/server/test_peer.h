// test_peer.h — a hand-driven protocol peer for coordinator tests: a real DEALER socket that
// sends exactly the bytes a test asks for (valid or not) and waits for specific replies.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "common/net/zmq_transport.h"
#include "common/wire/chunk_assembler.h"
#include "common/wire/codec.h"

namespace fedlora::testing {

inline wire::Hello MakeHello(std::string name, std::string digest,
                             std::vector<wire::ModuleInfo> modules) {
  wire::Hello h;
  h.client_name = std::move(name);
  h.software_version = "test";
  h.base_model_sha256 = std::move(digest);
  h.capabilities = wire::Capabilities{"cpu", 1 << 20, 0, 100, 1.0};
  h.modules = std::move(modules);
  return h;
}

class TestPeer {
 public:
  // `options` may carry CURVE keys (a client pinning the coordinator's key).
  TestPeer(net::Context& context, const std::string& endpoint, net::SocketOptions options = {}) {
    socket_ = std::move(net::Socket::Open(context, net::SocketKind::kDealer, options).value());
    if (options.curve) {
      EXPECT_TRUE(socket_.EnableMonitor(context).ok());
    }
    limits_.require_digests = !options.curve;  // A CURVE coordinator leaves them out.
    EXPECT_TRUE(socket_.Connect(endpoint).ok());
  }

  // CURVE peers (their socket is monitored): waits (bounded) for a handshake event of `kind`;
  // false if it never came.
  bool WaitForEvent(net::MonitorEventKind kind) {
    for (int i = 0; i < 300 && socket_.monitor() != nullptr; ++i) {
      net::PollItem item;
      item.socket = socket_.monitor();
      if (!net::Poll(std::span(&item, 1), std::chrono::milliseconds(100)).ok()) continue;
      for (const net::MonitorEvent& e : socket_.TakeMonitorEvents()) {
        if (e.kind == kind) return true;
      }
    }
    return false;
  }

  // Sends `body` in an envelope with this peer's session and next sequence number.
  std::uint64_t Send(wire::Body body, std::uint16_t version = wire::kProtocolVersion) {
    const wire::Envelope env{version, session_, ++sequence_, std::move(body)};
    const wire::EncodedMessage m = wire::Encode(env);
    EXPECT_TRUE(socket_.Send(m.frames()).ok());
    return env.sequence;
  }
  // As Send, for a peer whose connection may be gone (a refused handshake): ZeroMQ may have no
  // pipe to queue on. Whether it went out.
  bool TrySend(wire::Body body) {
    const wire::Envelope env{wire::kProtocolVersion, session_, ++sequence_, std::move(body)};
    return socket_.Send(wire::Encode(env).frames()).ok();
  }
  // Sends `body` as a chunked message in chunks of `chunk_bytes`: the head, then the chunks in
  // the order of `order` (indices; all of them in order when empty; a missing index is a lost
  // chunk). `corrupt`: flips one byte of that chunk. Returns the head's sequence number.
  std::uint64_t SendChunked(wire::Body body, std::uint64_t chunk_bytes,
                            std::vector<std::uint32_t> order = {},
                            std::optional<std::uint32_t> corrupt = std::nullopt) {
    const wire::Envelope env{wire::kProtocolVersion, session_, ++sequence_, std::move(body),
                             wire::ChunkedHead{.chunk_bytes = chunk_bytes}};
    const wire::EncodedMessage head = wire::Encode(env);
    EXPECT_TRUE(socket_.Send(head.frames()).ok());
    if (order.empty()) {
      order.resize(head.chunked->chunk_count);
      std::iota(order.begin(), order.end(), 0u);
    }
    for (std::uint32_t i : order) {
      std::vector<std::span<const std::byte>> pieces = wire::ChunkPieces(head, i);
      std::vector<std::byte> flipped;
      if (corrupt == i) {
        for (auto p : pieces) flipped.insert(flipped.end(), p.begin(), p.end());
        flipped[flipped.size() / 2] ^= std::byte{0x5a};
        pieces = {std::span<const std::byte>(flipped)};
      }
      const wire::EncodedMessage chunk = wire::EncodeChunk(
          session_, ++sequence_, wire::Chunk{env.sequence, i, std::uint64_t{i} * chunk_bytes, {}},
          pieces);
      EXPECT_TRUE(socket_.Send(chunk.frames()).ok());
    }
    return env.sequence;
  }
  std::uint64_t SendEnvelope(const wire::Envelope& env) {
    const wire::EncodedMessage m = wire::Encode(env);
    EXPECT_TRUE(socket_.Send(m.frames()).ok());
    return env.sequence;
  }
  void SendFrames(const std::vector<std::vector<std::byte>>& frames) {
    std::vector<std::span<const std::byte>> views(frames.begin(), frames.end());
    EXPECT_TRUE(socket_.Send(views).ok());
  }
  static std::vector<std::vector<std::byte>> Copy(const wire::EncodedMessage& m) {
    std::vector<std::vector<std::byte>> out;
    for (auto f : m.frames()) out.emplace_back(f.begin(), f.end());
    return out;
  }
  // Frames of `body` as this peer would send it, for tests to corrupt.
  std::vector<std::vector<std::byte>> Frames(wire::Body body) {
    const wire::Envelope env{wire::kProtocolVersion, session_, ++sequence_, std::move(body)};
    const wire::EncodedMessage m = wire::Encode(env);
    std::vector<std::vector<std::byte>> out;
    for (auto f : m.frames()) out.emplace_back(f.begin(), f.end());
    return out;
  }

  // The next message that is not a Heartbeat. Fails the test after a generous bound (which only
  // guards against a hung test; nothing waits for it in a passing run).
  wire::Envelope Next(std::chrono::seconds bound = std::chrono::seconds(30)) {
    const auto give_up = std::chrono::steady_clock::now() + bound;
    while (std::chrono::steady_clock::now() < give_up) {
      Result<std::optional<net::Message>> m = socket_.Receive(std::chrono::milliseconds(1000));
      if (!m.ok() || !m->has_value()) continue;
      Result<wire::Envelope> env = wire::Decode((*m)->frames(), limits_);
      EXPECT_TRUE(env.ok()) << env.status().ToString();
      if (!env.ok()) continue;
      if (std::holds_alternative<wire::Heartbeat>(env->body)) continue;
      // A chunked message is put back together and returned whole.
      if (env->chunked) {
        inbound_.emplace(wire::ChunkAssembler::InMemory(std::move(env).value()).value());
        ++chunked_received_;
        continue;
      }
      if (const auto* chunk = std::get_if<wire::Chunk>(&env->body)) {
        EXPECT_TRUE(inbound_.has_value()) << "a chunk outside a transfer";
        if (!inbound_) continue;
        const Status s = inbound_->Accept(*chunk);
        EXPECT_TRUE(s.ok()) << s.ToString();
        if (!inbound_->complete()) continue;
        Result<wire::Envelope> whole = inbound_->Finish();
        inbound_.reset();
        EXPECT_TRUE(whole.ok()) << whole.status().ToString();
        if (!whole.ok()) continue;
        return std::move(whole).value();
      }
      return std::move(env).value();
    }
    ADD_FAILURE() << "no message within " << bound.count() << " s";
    return wire::Envelope{};
  }
  template <typename T>
  T Expect(std::chrono::seconds bound = std::chrono::seconds(30)) {
    wire::Envelope env = Next(bound);
    EXPECT_TRUE(std::holds_alternative<T>(env.body))
        << "expected another message kind, got " << wire::BodyName(env.body)
        << (std::holds_alternative<wire::Error>(env.body)
                ? ": " + std::get<wire::Error>(env.body).message
                : "");
    if (!std::holds_alternative<T>(env.body)) return T{};
    return std::get<T>(std::move(env.body));
  }
  wire::ErrorCode ExpectError() { return Expect<wire::Error>().code; }

  // Says Hello and waits for the Welcome; adopts its session id.
  wire::Welcome Join(wire::Hello hello) {
    Send(std::move(hello));
    wire::Envelope env = Next();
    EXPECT_TRUE(std::holds_alternative<wire::Welcome>(env.body)) << wire::BodyName(env.body);
    session_ = env.session_id;
    return std::holds_alternative<wire::Welcome>(env.body) ? std::get<wire::Welcome>(env.body)
                                                           : wire::Welcome{};
  }

  std::uint64_t session() const { return session_; }
  int chunked_received() const { return chunked_received_; }  // Chunked messages received.
  std::uint64_t sequence() const { return sequence_; }
  void set_session(std::uint64_t s) { session_ = s; }

 private:
  net::Socket socket_;
  wire::DecodeLimits limits_;
  std::uint64_t session_ = 0;
  std::uint64_t sequence_ = 0;
  std::optional<wire::ChunkAssembler> inbound_;
  int chunked_received_ = 0;
};

}  // namespace fedlora::testing
