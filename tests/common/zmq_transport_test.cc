#include "common/net/zmq_transport.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "common/net/zmtp_probe.h"

namespace fedlora::net {
namespace {

using std::chrono::milliseconds;

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}
std::string Str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Waits (bounded) for one message; the bound only guards against a hung test.
Message ReceiveOne(Socket& s) {
  Result<std::optional<Message>> m = s.Receive(milliseconds(10000));
  EXPECT_TRUE(m.ok());
  EXPECT_TRUE(m->has_value());
  return std::move(**m);
}

void RouterDealerRoundTrip(const std::string& bind) {
  Context ctx;
  Result<Socket> router = Socket::Open(ctx, SocketKind::kRouter);
  ASSERT_TRUE(router.ok());
  ASSERT_TRUE(router->Bind(bind).ok());
  const std::string endpoint = router->LastEndpoint().value();
  Result<Socket> dealer = Socket::Open(ctx, SocketKind::kDealer);
  ASSERT_TRUE(dealer->Connect(endpoint).ok());

  const std::vector<std::span<const std::byte>> frames = {Bytes("envelope"), Bytes("tensor")};
  ASSERT_TRUE(dealer->Send(frames).ok());
  Message in = ReceiveOne(*router);
  ASSERT_EQ(in.size(), 3u);  // Routing id, envelope, tensor.
  EXPECT_EQ(Str(in.frame(1)), "envelope");
  EXPECT_EQ(Str(in.frame(2)), "tensor");
  EXPECT_EQ(in.total_bytes(), in.frame(0).size() + 14);

  const std::vector<std::span<const std::byte>> reply = {Bytes("welcome")};
  ASSERT_TRUE(router->Send(reply, in.frame(0)).ok());
  Message back = ReceiveOne(*dealer);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(Str(back.frame(0)), "welcome");
}

TEST(ZmqTransportTest, RouterAndDealerExchangeMultipartMessagesOverInproc) {
  RouterDealerRoundTrip("inproc://zmq-transport-test");
}

TEST(ZmqTransportTest, RouterAndDealerExchangeMultipartMessagesOverTcpLoopback) {
  RouterDealerRoundTrip("tcp://127.0.0.1:*");
}

TEST(ZmqTransportTest, RouterReportsUnknownPeerAsUnavailable) {
  Context ctx;
  Socket router = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  ASSERT_TRUE(router.Bind("inproc://zmq-unknown-peer").ok());
  const std::vector<std::span<const std::byte>> frames = {Bytes("x")};
  EXPECT_EQ(router.Send(frames, Bytes("nobody")).code(), StatusCode::kUnavailable);
}

TEST(ZmqTransportTest, ReceiveTimesOutWithNothing) {
  Context ctx;
  Socket router = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  ASSERT_TRUE(router.Bind("inproc://zmq-timeout").ok());
  Result<std::optional<Message>> m = router.Receive(milliseconds(0));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->has_value());
}

TEST(ZmqTransportTest, BindToAnAddressInUseIsUnavailable) {
  Context ctx;
  Socket a = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  ASSERT_TRUE(a.Bind("tcp://127.0.0.1:*").ok());
  Socket b = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  EXPECT_EQ(b.Bind(a.LastEndpoint().value()).code(), StatusCode::kUnavailable);
  EXPECT_EQ(b.Bind("nonsense://x").code(), StatusCode::kInvalidArgument);
}

// A restarted coordinator in the same process binds its inproc name again at once: Unbind frees it
// even while the old socket is still open (its connected peers keep their pipes).
TEST(ZmqTransportTest, UnbindFreesAnInprocNameAtOnceForAnotherSocket) {
  Context ctx;
  Socket a = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  ASSERT_TRUE(a.Bind("inproc://zmq-transport-unbind").ok());
  Socket dealer = std::move(Socket::Open(ctx, SocketKind::kDealer).value());
  ASSERT_TRUE(dealer.Connect("inproc://zmq-transport-unbind").ok());
  ASSERT_TRUE(a.Unbind("inproc://zmq-transport-unbind").ok());
  Socket b = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  EXPECT_TRUE(b.Bind("inproc://zmq-transport-unbind").ok());
  const std::vector<std::span<const std::byte>> frames = {Bytes("still here")};
  ASSERT_TRUE(dealer.Send(frames).ok());
  EXPECT_EQ(Str(ReceiveOne(a).frame(1)), "still here");
  EXPECT_EQ(a.Unbind("inproc://never-bound").code(), StatusCode::kNotFound);
}

TEST(ZmqTransportTest, WakePipeInterruptsPollFromAnotherThread) {
  Context ctx;
  Socket router = std::move(Socket::Open(ctx, SocketKind::kRouter).value());
  ASSERT_TRUE(router.Bind("inproc://zmq-wake").ok());
  WakePipe wake;
  std::thread t([&] { wake.Notify(); });
  PollItem items[2];
  items[0].socket = &router;
  items[1].fd = wake.read_fd();
  ASSERT_TRUE(Poll(items, milliseconds(-1)).ok());  // Returns only because of the wake-up.
  t.join();
  EXPECT_FALSE(items[0].readable);
  EXPECT_TRUE(items[1].readable);
  wake.Drain();
  ASSERT_TRUE(Poll(items, milliseconds(0)).ok());
  EXPECT_FALSE(items[1].readable);
}


// ---- CURVE and ZAP ---------------------------------------------------------------------------

namespace curve {

std::shared_ptr<const crypto::CurveKeyPair> NewKeys() {
  return std::make_shared<const crypto::CurveKeyPair>(crypto::GenerateCurveKeyPair());
}

// Waits (bounded) for a monitor event of `kind` on the monitored `socket`; nullopt if the bound
// passes first.
std::optional<MonitorEvent> WaitForEvent(Socket& socket, MonitorEventKind kind) {
  for (int i = 0; i < 100; ++i) {
    PollItem item;
    item.socket = socket.monitor();
    if (!Poll(std::span(&item, 1), milliseconds(100)).ok()) continue;
    for (MonitorEvent& e : socket.TakeMonitorEvents()) {
      if (e.kind == kind) return e;
    }
  }
  return std::nullopt;
}

struct CurveServer {
  Socket router;
  std::string endpoint;
};

CurveServer OpenServer(Context& ctx, std::shared_ptr<const crypto::CurveKeyPair> keys,
                       const std::string& domain) {
  SocketOptions options;
  options.curve = CurveOptions{std::move(keys), std::nullopt, domain};
  CurveServer s{Socket::Open(ctx, SocketKind::kRouter, options).value(), ""};
  EXPECT_TRUE(s.router.Bind("tcp://127.0.0.1:*").ok());
  s.endpoint = s.router.LastEndpoint().value();
  return s;
}

Socket OpenClient(Context& ctx, std::shared_ptr<const crypto::CurveKeyPair> keys,
                  const crypto::CurvePublicKey& server) {
  SocketOptions options;
  options.curve = CurveOptions{std::move(keys), server, ""};
  return Socket::Open(ctx, SocketKind::kDealer, options).value();
}

}  // namespace curve

TEST(ZmqTransportTest, CurveServerAdmitsKeysItsZapHandlerAllowsAndStampsTheirMessages) {
  Context ctx;
  const auto server_keys = curve::NewKeys(), alice = curve::NewKeys();
  std::atomic<int> asked{0};
  Result<ZapRegistration> zap = ctx.ServeZap("test", [&](const ZapRequest& r) {
    ++asked;
    EXPECT_EQ(r.mechanism, "CURVE");
    ZapVerdict v;
    v.allowed = r.client_key && *r.client_key == alice->public_key;
    v.user_id = "alice-id";
    return v;
  });
  ASSERT_TRUE(zap.ok()) << zap.status().ToString();
  curve::CurveServer server = curve::OpenServer(ctx, server_keys, "test");
  Socket client = curve::OpenClient(ctx, alice, server_keys->public_key);
  ASSERT_TRUE(client.Connect(server.endpoint).ok());
  const std::vector<std::span<const std::byte>> frames = {Bytes("secret tensor")};
  ASSERT_TRUE(client.Send(frames).ok());
  Message in = ReceiveOne(server.router);
  EXPECT_EQ(Str(in.frame(1)), "secret tensor");
  EXPECT_EQ(in.UserId(), "alice-id");
  EXPECT_GE(asked.load(), 1);
}

TEST(ZmqTransportTest, KeyTheZapHandlerRefusesFailsTheHandshakeWithAnAuthenticationEvent) {
  Context ctx;
  const auto server_keys = curve::NewKeys(), mallory = curve::NewKeys();
  Result<ZapRegistration> zap =
      ctx.ServeZap("test", [](const ZapRequest&) { return ZapVerdict{false, "", "no"}; });
  ASSERT_TRUE(zap.ok());
  curve::CurveServer server = curve::OpenServer(ctx, server_keys, "test");
  Socket client = curve::OpenClient(ctx, mallory, server_keys->public_key);
  ASSERT_TRUE(client.EnableMonitor(ctx).ok());
  ASSERT_TRUE(client.Connect(server.endpoint).ok());
  const std::optional<MonitorEvent> e =
      curve::WaitForEvent(client, MonitorEventKind::kHandshakeFailedAuth);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->value, 400u);
  // Nothing the refused client sent reached the server.
  const std::vector<std::span<const std::byte>> frames = {Bytes("x")};
  (void)client.Send(frames);
  Result<std::optional<Message>> m = server.router.Receive(milliseconds(200));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->has_value());
}

TEST(ZmqTransportTest, DomainWhoseRegistrationIsGoneRefusesEveryone) {
  Context ctx;
  const auto server_keys = curve::NewKeys(), alice = curve::NewKeys();
  {
    Result<ZapRegistration> zap =
        ctx.ServeZap("test", [](const ZapRequest&) { return ZapVerdict{true, "x", ""}; });
    ASSERT_TRUE(zap.ok());
    // A second handler for the same domain is refused while the first serves.
    EXPECT_EQ(ctx.ServeZap("test", [](const ZapRequest&) { return ZapVerdict{}; }).status().code(),
              StatusCode::kAlreadyExists);
  }
  curve::CurveServer server = curve::OpenServer(ctx, server_keys, "test");
  Socket client = curve::OpenClient(ctx, alice, server_keys->public_key);
  ASSERT_TRUE(client.EnableMonitor(ctx).ok());
  ASSERT_TRUE(client.Connect(server.endpoint).ok());
  EXPECT_TRUE(curve::WaitForEvent(client, MonitorEventKind::kHandshakeFailedAuth).has_value());
}

TEST(ZmqTransportTest, WrongPinnedServerKeyNeverCompletesAHandshake) {
  Context ctx;
  const auto server_keys = curve::NewKeys(), alice = curve::NewKeys();
  Result<ZapRegistration> zap =
      ctx.ServeZap("test", [](const ZapRequest&) { return ZapVerdict{true, "x", ""}; });
  curve::CurveServer server = curve::OpenServer(ctx, server_keys, "test");
  Socket client = curve::OpenClient(ctx, alice, curve::NewKeys()->public_key);
  ASSERT_TRUE(client.EnableMonitor(ctx).ok());
  ASSERT_TRUE(client.Connect(server.endpoint).ok());
  EXPECT_TRUE(
      curve::WaitForEvent(client, MonitorEventKind::kHandshakeFailedNoDetail).has_value());
}

TEST(ZmqTransportTest, ProbeReadsTheMechanismFromTheServersGreeting) {
  Context ctx;
  const auto server_keys = curve::NewKeys();
  Result<ZapRegistration> zap =
      ctx.ServeZap("test", [](const ZapRequest&) { return ZapVerdict{}; });
  curve::CurveServer server = curve::OpenServer(ctx, server_keys, "test");
  Result<std::string> curve_mechanism =
      ProbeZmtpMechanism(server.endpoint, milliseconds(5000));
  ASSERT_TRUE(curve_mechanism.ok()) << curve_mechanism.status().ToString();
  EXPECT_EQ(*curve_mechanism, "CURVE");

  Socket plain = Socket::Open(ctx, SocketKind::kRouter).value();
  ASSERT_TRUE(plain.Bind("tcp://127.0.0.1:*").ok());
  Result<std::string> null_mechanism =
      ProbeZmtpMechanism(plain.LastEndpoint().value(), milliseconds(5000));
  ASSERT_TRUE(null_mechanism.ok()) << null_mechanism.status().ToString();
  EXPECT_EQ(*null_mechanism, "NULL");
  EXPECT_FALSE(ProbeZmtpMechanism("inproc://x", milliseconds(100)).ok());
}

}  // namespace
}  // namespace fedlora::net
