#include "common/net/security_mode.h"

#include <gtest/gtest.h>

#include "common/net/endpoint.h"

namespace fedlora::net {
namespace {

TEST(EndpointTest, LoopbackIpcAndInprocAreLocal) {
  for (const char* e : {"tcp://127.0.0.1:5555", "tcp://127.3.2.1:*", "tcp://localhost:5555",
                        "tcp://[::1]:5555", "ipc:///tmp/fedlora.sock", "inproc://sim",
                        "tcp://10.0.0.1:6000;127.0.0.1:5555"}) {
    EXPECT_TRUE(IsLocalEndpoint(e)) << e;
  }
}

TEST(EndpointTest, WildcardsInterfacesAndOtherAddressesAreNot) {
  for (const char* e : {"tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://[::]:5555",
                        "tcp://eth0:5555", "tcp://10.1.2.3:5555", "tcp://coord.example.com:5555",
                        "tcp://127.0.0.1.nip.io:5555", "tcp://128.0.0.1:5555", "udp://x:1",
                        "tcp://127.0.0.1"}) {
    EXPECT_FALSE(IsLocalEndpoint(e)) << e;
  }
}

TEST(SecurityModeTest, AutoIsCurveBeyondThisMachineOrWithKeys) {
  EXPECT_EQ(ResolveSecurityMode({"auto", "tcp://*:5555", false, false, "security"}).value(),
            SecurityMode::kCurve);
  EXPECT_EQ(ResolveSecurityMode({"auto", "tcp://127.0.0.1:5555", false, false, "security"}).value(),
            SecurityMode::kNone);
  EXPECT_EQ(ResolveSecurityMode({"auto", "tcp://127.0.0.1:5555", true, false, "security"}).value(),
            SecurityMode::kCurve);
  EXPECT_EQ(ResolveSecurityMode({"auto", "inproc://sim", false, false, "security"}).value(),
            SecurityMode::kNone);
}

TEST(SecurityModeTest, PlaintextOnAPublicAddressNeedsAnExplicitOptOut) {
  const Result<SecurityMode> refused =
      ResolveSecurityMode({"none", "tcp://*:5555", false, false, "security"});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("security.allow_insecure"), std::string::npos);
  const SecurityChoice opted{"none", "tcp://*:5555", false, true, "security"};
  EXPECT_EQ(ResolveSecurityMode(opted).value(), SecurityMode::kNone);
  EXPECT_TRUE(IsInsecureOptOut(opted, SecurityMode::kNone));
  const SecurityChoice loopback{"none", "tcp://127.0.0.1:5555", false, false, "security"};
  EXPECT_EQ(ResolveSecurityMode(loopback).value(), SecurityMode::kNone);
  EXPECT_FALSE(IsInsecureOptOut(loopback, SecurityMode::kNone));
}

TEST(SecurityModeTest, CurveOverInprocAndUnknownModesAreRefused) {
  EXPECT_FALSE(ResolveSecurityMode({"curve", "inproc://x", true, false, "security"}).ok());
  EXPECT_FALSE(ResolveSecurityMode({"tls", "tcp://*:1", true, false, "security"}).ok());
  EXPECT_EQ(ResolveSecurityMode({"curve", "ipc:///tmp/x", true, false, "security"}).value(),
            SecurityMode::kCurve);
}

}  // namespace
}  // namespace fedlora::net
