// zmq_transport.h — owned ZeroMQ contexts and sockets, multipart send/receive, polling.
//
// A thin door over cppzmq: nothing outside zmq_transport.cc sees zmq.hpp or a zmq exception.
// Knows frames and endpoints; knows nothing about envelopes (wire/codec.h) or rounds.
//
// Threading: a Context is thread-safe. A Socket belongs to the thread that uses it; moving it to
// another thread is allowed only while no other thread touches it (ZeroMQ's own rule).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedlora::net {

class Context {
 public:
  explicit Context(int io_threads = 1);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  void* raw();  // Borrowed; for Socket only.

 private:
  friend class Socket;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class SocketKind { kRouter, kDealer, kPair };

struct SocketOptions {
  // Inbound frames larger than this make ZeroMQ drop the connection (ZMQ_MAXMSGSIZE); -1 = none.
  std::int64_t max_frame_bytes = -1;
  // Identity a DEALER presents to a ROUTER (ZMQ_ROUTING_ID); empty = chosen by ZeroMQ.
  std::string routing_id;
  int send_hwm = 1000;     // Messages queued per peer before sends fail with kUnavailable.
  int receive_hwm = 1000;
};

// One received multipart message. Move-only; owns its frames.
class Message {
 public:
  Message();
  ~Message();
  Message(Message&&) noexcept;
  Message& operator=(Message&&) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;

  std::size_t size() const;                          // Number of frames.
  std::span<const std::byte> frame(std::size_t i) const;
  std::size_t total_bytes() const;
  // Views of frames [first, size()).
  std::vector<std::span<const std::byte>> frames(std::size_t first = 0) const;

 private:
  friend class Socket;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Socket {
 public:
  // `context` must outlive the socket. Linger is 0, so closing never blocks on a vanished peer.
  // A ROUTER is opened with ROUTER_MANDATORY, so sending to an unknown peer is kUnavailable.
  static Result<Socket> Open(Context& context, SocketKind kind, const SocketOptions& options = {});

  Socket();
  ~Socket();
  Socket(Socket&&) noexcept;
  Socket& operator=(Socket&&) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  Status Bind(const std::string& endpoint);     // kInvalidArgument / kUnavailable (port in use).
  Status Connect(const std::string& endpoint);
  // The endpoint actually bound (resolves "tcp://127.0.0.1:*" to a port).
  Result<std::string> LastEndpoint() const;

  // Sends `prefix` frames (e.g. a ROUTER's routing id) then `frames` as one multipart message.
  // Never blocks: kUnavailable when the peer is unknown or its queue is full.
  Status Send(std::span<const std::span<const std::byte>> frames,
              std::span<const std::byte> prefix = {});

  // Waits up to `timeout` (0 = poll) for a message. nullopt on timeout.
  Result<std::optional<Message>> Receive(std::chrono::milliseconds timeout);

  // How long closing waits to deliver queued messages (ms); sockets open with 0. Raise it before
  // closing when the last messages (a Bye) must reach their peers.
  void SetLinger(int milliseconds);

  bool valid() const;
  void* raw() const;  // Borrowed; for Poll only.

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A self-pipe another thread, or a signal handler, can use to wake a Poll. Notify() is
// async-signal-safe. Owned fds are closed on destruction.
class WakePipe {
 public:
  WakePipe();
  ~WakePipe();
  WakePipe(const WakePipe&) = delete;
  WakePipe& operator=(const WakePipe&) = delete;

  void Notify();  // Async-signal-safe; coalesces.
  void Drain();   // Consumes pending notifications.
  int read_fd() const { return fds_[0]; }

 private:
  int fds_[2] = {-1, -1};
};

struct PollItem {
  Socket* socket = nullptr;  // Either a socket...
  int fd = -1;               // ...or a file descriptor.
  bool readable = false;     // Set by Poll.
};

// Waits until an item is readable or `timeout` passes (negative = forever). Interrupted system
// calls (EINTR) return OK with nothing readable, so callers can check their stop flag.
Status Poll(std::span<PollItem> items, std::chrono::milliseconds timeout);

}  // namespace fedlora::net
