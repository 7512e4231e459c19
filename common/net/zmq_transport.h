// zmq_transport.h — owned ZeroMQ contexts and sockets, multipart send/receive, polling.
//
// A thin door over cppzmq: nothing outside zmq_transport.cc sees zmq.hpp or a zmq exception.
// Knows frames and endpoints; knows nothing about envelopes (wire/codec.h) or rounds.
//
// Security: a socket may use CURVE (SocketOptions::curve): Curve25519 key agreement, then every
// message encrypted and authenticated (XSalsa20-Poly1305). A CURVE server names a ZAP domain; the
// handler the Context serves for that domain (Context::ServeZap) admits or refuses each client
// key during the handshake, and the User-Id it returns arrives with every message from that
// connection (Message::UserId), so the receiver knows which key sent it.
//
// Threading: a Context is thread-safe. A Socket belongs to the thread that uses it; moving it to
// another thread is allowed only while no other thread touches it (ZeroMQ's own rule).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/crypto/curve_keys.h"
#include "common/status.h"

namespace fedlora::net {

// One ZAP (ZeroMQ Authentication Protocol, RFC 27) request: a peer completing a handshake with a
// socket of `domain`.
struct ZapRequest {
  std::string domain;
  std::string address;    // The peer's IP address ("127.0.0.1"); empty for ipc.
  std::string mechanism;  // "CURVE", "NULL", "PLAIN".
  std::optional<crypto::CurvePublicKey> client_key;  // CURVE: the key the client proved it holds.
};
struct ZapVerdict {
  bool allowed = false;
  std::string user_id;  // Allowed: attached to every message of the connection (Message::UserId).
  std::string reason;   // Refused: sent to the peer as the status text.
};
// Runs on the Context's ZAP thread: must be thread-safe and quick.
using ZapHandler = std::function<ZapVerdict(const ZapRequest&)>;

// While alive, `domain`'s handler answers ZAP requests. Move-only.
class ZapRegistration {
 public:
  ZapRegistration() = default;
  ~ZapRegistration();
  ZapRegistration(ZapRegistration&& other) noexcept;
  ZapRegistration& operator=(ZapRegistration&& other) noexcept;
  ZapRegistration(const ZapRegistration&) = delete;
  ZapRegistration& operator=(const ZapRegistration&) = delete;

 private:
  friend class Context;
  std::function<void()> release_;
};

class Context {
 public:
  explicit Context(int io_threads = 1);
  ~Context();  // Stops the ZAP thread first; every socket of the context must be closed by then.
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  void* raw();  // Borrowed; for Socket only.

  // ZeroMQ's limit on the sockets this context may have open at once (ZMQ_MAX_SOCKETS; its
  // default, 1,023, is what stopped simulations at ~1,020 clients). Call before the first socket
  // opens. kResourceExhausted naming both numbers when `n` is above what this libzmq allows
  // (ZMQ_SOCKET_LIMIT); kInvalidArgument for n < 1.
  Status SetMaxSockets(int n);
  int max_sockets() const;

  // Serves ZAP requests of `domain` with `handler` until the registration is destroyed; requests
  // of a domain nobody serves are refused. The first call starts the context's ZAP thread (bound
  // to inproc://zeromq.zap.01, once per context, for the context's lifetime). kAlreadyExists if
  // the domain is served already.
  Result<ZapRegistration> ServeZap(const std::string& domain, ZapHandler handler);

 private:
  friend class Socket;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class SocketKind { kRouter, kDealer, kPair, kPush, kPull };  // Push/Pull: benchmarks.

// CURVE for one socket. A server holds its key pair and a ZAP domain; a client additionally pins
// the server's public key (the handshake fails unless the server proves it holds that key).
struct CurveOptions {
  std::shared_ptr<const crypto::CurveKeyPair> own;   // Required.
  std::optional<crypto::CurvePublicKey> server_key;  // Set: a client. Unset: a server.
  std::string zap_domain;                            // Server only; required.
};

struct SocketOptions {
  // Inbound frames larger than this make ZeroMQ drop the connection (ZMQ_MAXMSGSIZE); -1 = none.
  std::int64_t max_frame_bytes = -1;
  // Identity a DEALER presents to a ROUTER (ZMQ_ROUTING_ID); empty = chosen by ZeroMQ.
  std::string routing_id;
  int send_hwm = 1000;  // Messages queued per peer before sends fail with kUnavailable.
  int receive_hwm = 1000;
  std::optional<CurveOptions> curve;  // Unset: plaintext (ZeroMQ's NULL mechanism).
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

  std::size_t size() const;  // Number of frames.
  std::span<const std::byte> frame(std::size_t i) const;
  std::size_t total_bytes() const;
  // Views of frames [first, size()).
  std::vector<std::span<const std::byte>> frames(std::size_t first = 0) const;
  // The ZAP User-Id of the connection the message came from (a CURVE server's peers); empty
  // when there is none.
  std::string UserId() const;

 private:
  friend class Socket;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One event of a socket monitor.
enum class MonitorEventKind {
  kConnected,
  kDisconnected,
  kHandshakeSucceeded,
  kHandshakeFailedNoDetail,  // The peer closed the connection during the handshake.
  kHandshakeFailedProtocol,  // value: a ZMTP protocol error (see HandshakeErrorName).
  kHandshakeFailedAuth,      // value: the ZAP status code of the refusal (400).
  kOther,
};
struct MonitorEvent {
  MonitorEventKind kind = MonitorEventKind::kOther;
  std::uint32_t value = 0;
  std::string endpoint;
  // kHandshakeFailedProtocol: the peer speaks another security mechanism (NULL vs CURVE).
  bool mechanism_mismatch() const;
  // kHandshakeFailedProtocol: a cryptographic check failed (e.g. a wrong server key).
  bool cryptographic() const;
};
std::string_view MonitorEventName(MonitorEventKind kind);

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

  Status Bind(const std::string& endpoint);  // kInvalidArgument / kUnavailable (port in use).
  // Stops listening on a bound endpoint (the resolved one: LastEndpoint). An inproc name is free
  // for another Bind when this returns; closing alone frees it later, on ZeroMQ's reaper thread.
  // Peers already connected keep their pipes until the socket closes.
  Status Unbind(const std::string& endpoint);
  Status Connect(const std::string& endpoint);
  // The endpoint actually bound (resolves "tcp://127.0.0.1:*" to a port).
  Result<std::string> LastEndpoint() const;

  // Sends `prefix` frames (e.g. a ROUTER's routing id) then `frames` as one multipart message.
  // Never blocks: kUnavailable when the peer is unknown or its queue is full.
  Status Send(std::span<const std::span<const std::byte>> frames,
              std::span<const std::byte> prefix = {});

  // As Send, but frames [first_shared, end) are handed to ZeroMQ without a copy: it reads them
  // in place until they are sent and holds `owner`, which must keep their bytes alive and
  // unchanged, until then. For bytes many messages share (one task sent to many clients).
  Status SendShared(std::span<const std::span<const std::byte>> frames, std::size_t first_shared,
                    std::shared_ptr<const void> owner, std::span<const std::byte> prefix = {});

  // Waits up to `timeout` (0 = poll) for a message. nullopt on timeout.
  Result<std::optional<Message>> Receive(std::chrono::milliseconds timeout);

  // How long closing waits to deliver queued messages (ms); sockets open with 0. Raise it before
  // closing when the last messages (a Bye) must reach their peers.
  void SetLinger(int milliseconds);

  // Starts reporting this socket's handshake outcomes (ZeroMQ's socket monitor: handshake
  // succeeded / failed, nothing else). Enable before Connect to see the first handshake. The
  // socket owns the monitor and stops it before either closes: libzmq's I/O thread blocks for
  // good on an event for a monitor whose reading end is gone (libzmq issue #3575), stalling every
  // socket of the context.
  Status EnableMonitor(Context& context);
  // The monitor's reading end, for Poll (nullptr without EnableMonitor)...
  Socket* monitor();
  // ...and the events waiting on it, without blocking.
  std::vector<MonitorEvent> TakeMonitorEvents();

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
  Socket* socket = nullptr;    // Either a socket...
  int fd = -1;                 // ...or a file descriptor.
  bool want_writable = false;  // Also wake when a message can be sent (a DEALER's queue has room).
  bool readable = false;       // Set by Poll.
  bool writable = false;       // Set by Poll (want_writable only).
};

// Waits until an item is readable (or writable, where asked) or `timeout` passes (negative =
// forever). Interrupted system calls (EINTR) return OK with nothing readable, so callers can check
// their stop flag.
Status Poll(std::span<PollItem> items, std::chrono::milliseconds timeout);

}  // namespace fedlora::net
