#include "common/net/zmq_transport.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

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

}  // namespace
}  // namespace fedlora::net
