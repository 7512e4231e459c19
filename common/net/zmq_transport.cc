#include "common/net/zmq_transport.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <zmq.hpp>

#include "common/crypto/random.h"
#include "common/net/zap_service.h"

namespace fedlora::net {
namespace {

Status FromZmq(const zmq::error_t& e, std::string_view what) {
  const int err = e.num();
  const StatusCode code = (err == EAGAIN || err == EHOSTUNREACH || err == EADDRINUSE)
                              ? StatusCode::kUnavailable
                          : (err == EINVAL || err == EPROTONOSUPPORT || err == ENOCOMPATPROTO)
                              ? StatusCode::kInvalidArgument
                          : err == ETERM                   ? StatusCode::kCancelled
                          : err == ENOENT                  ? StatusCode::kNotFound
                          : err == EMFILE || err == ENFILE ? StatusCode::kResourceExhausted
                                                           : StatusCode::kInternal;
  return Status(code, StrCat(what, ": ", e.what()));
}

}  // namespace

// ---- Context -------------------------------------------------------------------------------

struct Context::Impl {
  zmq::context_t ctx;
  std::mutex zap_mu;
  std::unique_ptr<ZapService> zap;  // Started by the first ServeZap; guarded by zap_mu.
  ~Impl() { zap.reset(); }          // Its socket closes before the context terminates.
};

Context::Context(int io_threads) : impl_(std::make_unique<Impl>()) {
  impl_->ctx.set(zmq::ctxopt::io_threads, io_threads);
  // Sockets are closed with linger 0, so terminating the context never blocks on them.
  impl_->ctx.set(zmq::ctxopt::blocky, 0);
}
Context::~Context() = default;
void* Context::raw() { return impl_->ctx.handle(); }

Status Context::SetMaxSockets(int n) {
  if (n < 1) return InvalidArgument("ZeroMQ max_sockets ", n, " must be >= 1");
  const int limit = impl_->ctx.get(zmq::ctxopt::socket_limit);
  if (n > limit) {
    return MakeStatus(StatusCode::kResourceExhausted, "ZeroMQ sockets: ", n,
                      " wanted, but this libzmq allows at most ", limit, " per context");
  }
  impl_->ctx.set(zmq::ctxopt::max_sockets, n);
  return OkStatus();
}

int Context::max_sockets() const { return impl_->ctx.get(zmq::ctxopt::max_sockets); }

Result<ZapRegistration> Context::ServeZap(const std::string& domain, ZapHandler handler) {
  std::lock_guard<std::mutex> lock(impl_->zap_mu);
  if (!impl_->zap) {
    FEDLORA_ASSIGN_OR_RETURN(impl_->zap, ZapService::Start(impl_->ctx.handle()));
  }
  FEDLORA_RETURN_IF_ERROR(impl_->zap->Add(domain, std::move(handler)));
  ZapRegistration registration;
  Impl* impl = impl_.get();
  registration.release_ = [impl, domain] {
    std::lock_guard<std::mutex> lock(impl->zap_mu);
    if (impl->zap) impl->zap->Remove(domain);
  };
  return registration;
}

ZapRegistration::~ZapRegistration() {
  if (release_) release_();
}
ZapRegistration::ZapRegistration(ZapRegistration&& other) noexcept
    : release_(std::exchange(other.release_, nullptr)) {}
ZapRegistration& ZapRegistration::operator=(ZapRegistration&& other) noexcept {
  if (this != &other) {
    if (release_) release_();
    release_ = std::exchange(other.release_, nullptr);
  }
  return *this;
}

// ---- Message -------------------------------------------------------------------------------

struct Message::Impl {
  std::vector<zmq::message_t> parts;
};

Message::Message() : impl_(std::make_unique<Impl>()) {}
Message::~Message() = default;
Message::Message(Message&&) noexcept = default;
Message& Message::operator=(Message&&) noexcept = default;

std::size_t Message::size() const { return impl_->parts.size(); }

std::span<const std::byte> Message::frame(std::size_t i) const {
  const zmq::message_t& m = impl_->parts.at(i);
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

std::size_t Message::total_bytes() const {
  std::size_t total = 0;
  for (const auto& m : impl_->parts) total += m.size();
  return total;
}

std::vector<std::span<const std::byte>> Message::frames(std::size_t first) const {
  std::vector<std::span<const std::byte>> out;
  for (std::size_t i = first; i < size(); ++i) out.push_back(frame(i));
  return out;
}

std::string Message::UserId() const {
  // A ROUTER's routing-id frame carries no metadata; the frames read from the connection do.
  for (const zmq::message_t& part : impl_->parts) {
    const char* id = zmq_msg_gets(const_cast<zmq::message_t&>(part).handle(), "User-Id");
    if (id != nullptr) return id;
  }
  return "";
}

// ---- Socket --------------------------------------------------------------------------------

struct Socket::Impl {
  zmq::socket_t socket;
  std::unique_ptr<Socket> monitor;  // The reading end of its monitor, if enabled.
  ~Impl() {
    if (monitor != nullptr && socket.handle() != nullptr) {
      // Stop first (no MONITOR_STOPPED event is asked for, so nothing is sent), then close the
      // reading end, then (after this body) the socket.
      zmq_socket_monitor(socket.handle(), nullptr, 0);
    }
    monitor.reset();
  }
};

Socket::Socket() = default;
Socket::~Socket() = default;
Socket::Socket(Socket&&) noexcept = default;
Socket& Socket::operator=(Socket&&) noexcept = default;

Result<Socket> Socket::Open(Context& context, SocketKind kind, const SocketOptions& options) try {
  const zmq::socket_type type = kind == SocketKind::kRouter   ? zmq::socket_type::router
                                : kind == SocketKind::kDealer ? zmq::socket_type::dealer
                                : kind == SocketKind::kPush   ? zmq::socket_type::push
                                : kind == SocketKind::kPull   ? zmq::socket_type::pull
                                                              : zmq::socket_type::pair;
  Socket s;
  s.impl_ = std::make_unique<Impl>();
  s.impl_->socket = zmq::socket_t(context.impl_->ctx, type);
  zmq::socket_t& sock = s.impl_->socket;
  sock.set(zmq::sockopt::linger, 0);
  sock.set(zmq::sockopt::sndhwm, options.send_hwm);
  sock.set(zmq::sockopt::rcvhwm, options.receive_hwm);
  if (options.max_frame_bytes >= 0) sock.set(zmq::sockopt::maxmsgsize, options.max_frame_bytes);
  if (!options.routing_id.empty()) sock.set(zmq::sockopt::routing_id, options.routing_id);
  if (kind == SocketKind::kRouter) sock.set(zmq::sockopt::router_mandatory, 1);
  if (options.curve) {
    const CurveOptions& curve = *options.curve;
    if (curve.own == nullptr) return InvalidArgument("CURVE socket without a key pair");
    const auto set_key = [&](int option, const std::array<std::uint8_t, 32>& key) {
      if (zmq_setsockopt(sock.handle(), option, key.data(), key.size()) != 0) {
        throw zmq::error_t();
      }
    };
    if (curve.server_key) {
      set_key(ZMQ_CURVE_SERVERKEY, curve.server_key->bytes);
      set_key(ZMQ_CURVE_PUBLICKEY, curve.own->public_key.bytes);
      set_key(ZMQ_CURVE_SECRETKEY, curve.own->secret_key.bytes());
    } else {
      if (curve.zap_domain.empty()) {
        return InvalidArgument("a CURVE server needs a ZAP domain (otherwise any key is admitted)");
      }
      sock.set(zmq::sockopt::curve_server, 1);
      set_key(ZMQ_CURVE_SECRETKEY, curve.own->secret_key.bytes());
      sock.set(zmq::sockopt::zap_domain, curve.zap_domain);
    }
  }
  return s;
} catch (const zmq::error_t& e) {
  return FromZmq(e, "opening socket");
}

Status Socket::Bind(const std::string& endpoint) try {
  impl_->socket.bind(endpoint);
  return OkStatus();
} catch (const zmq::error_t& e) {
  return FromZmq(e, StrCat("bind ", endpoint));
}

Status Socket::Unbind(const std::string& endpoint) try {
  impl_->socket.unbind(endpoint);
  return OkStatus();
} catch (const zmq::error_t& e) {
  return FromZmq(e, StrCat("unbind ", endpoint));
}

Status Socket::Connect(const std::string& endpoint) try {
  impl_->socket.connect(endpoint);
  return OkStatus();
} catch (const zmq::error_t& e) {
  return FromZmq(e, StrCat("connect ", endpoint));
}

Result<std::string> Socket::LastEndpoint() const try {
  return impl_->socket.get(zmq::sockopt::last_endpoint);
} catch (const zmq::error_t& e) {
  return FromZmq(e, "last_endpoint");
}

Status Socket::Send(std::span<const std::span<const std::byte>> frames,
                    std::span<const std::byte> prefix) {
  return SendShared(frames, frames.size(), nullptr, prefix);
}

Status Socket::SendShared(std::span<const std::span<const std::byte>> frames,
                          std::size_t first_shared, std::shared_ptr<const void> owner,
                          std::span<const std::byte> prefix) try {
  FEDLORA_CHECK(!frames.empty());
  zmq::socket_t& sock = impl_->socket;
  // The first part decides whether the peer is reachable: with dontwait nothing is queued when
  // it fails, and once one part is accepted ZeroMQ guarantees the rest of the message is too.
  const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
  if (!prefix.empty()) {
    if (!sock.send(zmq::const_buffer(prefix.data(), prefix.size()), more)) {
      return Unavailable("send would block (peer queue full)");
    }
  }
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const bool last = i + 1 == frames.size();
    zmq::message_t part;
    if (i >= first_shared) {
      // In place: ZeroMQ calls the deleter (dropping its reference to `owner`) once the frame is
      // sent or discarded, whichever comes first.
      auto* hold = new std::shared_ptr<const void>(owner);
      part.rebuild(
          const_cast<std::byte*>(frames[i].data()), frames[i].size(),
          [](void*, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); }, hold);
    } else {
      part.rebuild(frames[i].data(), frames[i].size());  // The one copy of the bytes.
    }
    if (!sock.send(part, last ? zmq::send_flags::dontwait : more)) {
      return Unavailable("send would block (peer queue full)");
    }
  }
  return OkStatus();
} catch (const zmq::error_t& e) {
  return FromZmq(e, "send");
}

Result<std::optional<Message>> Socket::Receive(std::chrono::milliseconds timeout) try {
  zmq::socket_t& sock = impl_->socket;
  if (timeout.count() != 0) {
    zmq::pollitem_t item{sock.handle(), 0, ZMQ_POLLIN, 0};
    try {
      if (zmq::poll(&item, 1, timeout) == 0) return std::optional<Message>();
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) return std::optional<Message>();  // A signal: let the caller look.
      throw;
    }
  }
  Message msg;
  zmq::message_t part;
  try {
    if (!sock.recv(part, zmq::recv_flags::dontwait)) return std::optional<Message>();
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return std::optional<Message>();
    throw;
  }
  bool more = part.more();
  msg.impl_->parts.push_back(std::move(part));
  while (more) {  // The remaining parts of a multipart message are already here.
    zmq::message_t next;
    try {
      if (!sock.recv(next, zmq::recv_flags::none)) break;
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;  // Never split a multipart message over a signal.
      throw;
    }
    more = next.more();
    msg.impl_->parts.push_back(std::move(next));
  }
  return std::optional<Message>(std::move(msg));
} catch (const zmq::error_t& e) {
  return FromZmq(e, "receive");
}

// nullopt for a message that is not a monitor event.
namespace {
std::optional<MonitorEvent> ParseMonitorEvent(const Message& message) {
  if (message.size() != 2 || message.frame(0).size() != 6) return std::nullopt;
  const std::span<const std::byte> head = message.frame(0);
  std::uint16_t event = 0;
  std::uint32_t value = 0;
  std::memcpy(&event, head.data(), 2);
  std::memcpy(&value, head.data() + 2, 4);
  MonitorEvent out;
  out.value = value;
  const std::span<const std::byte> ep = message.frame(1);
  out.endpoint.assign(reinterpret_cast<const char*>(ep.data()), ep.size());
  switch (event) {
    case ZMQ_EVENT_CONNECTED:
    case ZMQ_EVENT_ACCEPTED:
      out.kind = MonitorEventKind::kConnected;
      break;
    case ZMQ_EVENT_DISCONNECTED:
      out.kind = MonitorEventKind::kDisconnected;
      break;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
      out.kind = MonitorEventKind::kHandshakeSucceeded;
      break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      out.kind = MonitorEventKind::kHandshakeFailedNoDetail;
      break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      out.kind = MonitorEventKind::kHandshakeFailedProtocol;
      break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
      out.kind = MonitorEventKind::kHandshakeFailedAuth;
      break;
    default:
      out.kind = MonitorEventKind::kOther;
      break;
  }
  return out;
}
}  // namespace

Status Socket::EnableMonitor(Context& context) {
  static std::atomic<std::uint64_t> counter{0};
  const std::string endpoint =
      StrCat("inproc://fedlora-monitor-", crypto::RandomU64(), "-", ++counter);
  constexpr int kEvents = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                          ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(impl_->socket.handle(), endpoint.c_str(), kEvents) != 0) {
    return Internal("socket monitor: ", zmq_strerror(zmq_errno()));
  }
  Result<Socket> pair = Socket::Open(context, SocketKind::kPair);
  Status connected = pair.ok() ? pair->Connect(endpoint) : pair.status();
  if (!connected.ok()) {
    zmq_socket_monitor(impl_->socket.handle(), nullptr, 0);
    return connected;
  }
  impl_->monitor = std::make_unique<Socket>(std::move(pair).value());
  return OkStatus();
}

Socket* Socket::monitor() { return impl_ != nullptr ? impl_->monitor.get() : nullptr; }

std::vector<MonitorEvent> Socket::TakeMonitorEvents() {
  std::vector<MonitorEvent> events;
  if (impl_ == nullptr || impl_->monitor == nullptr) return events;
  while (true) {
    Result<std::optional<Message>> m = impl_->monitor->Receive(std::chrono::milliseconds(0));
    if (!m.ok() || !m->has_value()) return events;
    if (std::optional<MonitorEvent> e = ParseMonitorEvent(**m)) events.push_back(std::move(*e));
  }
}

bool MonitorEvent::mechanism_mismatch() const {
  return kind == MonitorEventKind::kHandshakeFailedProtocol &&
         value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH;
}
bool MonitorEvent::cryptographic() const {
  return kind == MonitorEventKind::kHandshakeFailedProtocol &&
         (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC ||
          value == ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE);
}

std::string_view MonitorEventName(MonitorEventKind kind) {
  switch (kind) {
    case MonitorEventKind::kConnected:
      return "connected";
    case MonitorEventKind::kDisconnected:
      return "disconnected";
    case MonitorEventKind::kHandshakeSucceeded:
      return "handshake succeeded";
    case MonitorEventKind::kHandshakeFailedNoDetail:
      return "handshake failed (connection closed)";
    case MonitorEventKind::kHandshakeFailedProtocol:
      return "handshake failed (protocol)";
    case MonitorEventKind::kHandshakeFailedAuth:
      return "handshake failed (authentication)";
    case MonitorEventKind::kOther:
      break;
  }
  return "other";
}

void Socket::SetLinger(int milliseconds) {
  try {
    impl_->socket.set(zmq::sockopt::linger, milliseconds);
  } catch (const zmq::error_t&) {  // Only fails on a closed socket: nothing to deliver then.
  }
}

bool Socket::valid() const { return impl_ != nullptr && impl_->socket.handle() != nullptr; }
void* Socket::raw() const { return impl_->socket.handle(); }

// ---- WakePipe ------------------------------------------------------------------------------

WakePipe::WakePipe() {
  FEDLORA_CHECK_MSG(pipe2(fds_, O_NONBLOCK | O_CLOEXEC) == 0, "pipe2 failed, errno ", errno);
}

WakePipe::~WakePipe() {
  close(fds_[0]);
  close(fds_[1]);
}

void WakePipe::Notify() {
  const char c = 1;
  // A full pipe already holds a pending wake-up; nothing else can go wrong here.
  [[maybe_unused]] ssize_t n = write(fds_[1], &c, 1);
}

void WakePipe::Drain() {
  char buf[64];
  while (read(fds_[0], buf, sizeof(buf)) > 0) {
  }
}

// ---- Poll ----------------------------------------------------------------------------------

Status Poll(std::span<PollItem> items, std::chrono::milliseconds timeout) {
  std::vector<zmq_pollitem_t> raw(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    raw[i].socket = items[i].socket != nullptr ? items[i].socket->raw() : nullptr;
    raw[i].fd = items[i].fd;
    raw[i].events = static_cast<short>(ZMQ_POLLIN | (items[i].want_writable ? ZMQ_POLLOUT : 0));
    raw[i].revents = 0;
    items[i].readable = false;
    items[i].writable = false;
  }
  const int rc = zmq_poll(raw.data(), static_cast<int>(raw.size()),
                          timeout.count() < 0 ? -1 : static_cast<long>(timeout.count()));
  if (rc < 0) {
    if (errno == EINTR) return OkStatus();
    if (errno == ETERM) return Status(StatusCode::kCancelled, "context terminated");
    return Internal("zmq_poll: ", zmq_strerror(errno));
  }
  for (std::size_t i = 0; i < items.size(); ++i) {
    items[i].readable = (raw[i].revents & ZMQ_POLLIN) != 0;
    items[i].writable = (raw[i].revents & ZMQ_POLLOUT) != 0;
  }
  return OkStatus();
}

}  // namespace fedlora::net
