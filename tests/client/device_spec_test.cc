#include "client/device_spec.h"

#include <gtest/gtest.h>

namespace fedlora::client {
namespace {

TEST(DeviceSpecTest, AcceptsAutoCpuAndCudaOrdinals) {
  EXPECT_EQ(ParseDeviceSpec("auto")->kind, DeviceSpec::Kind::kAuto);
  EXPECT_EQ(ParseDeviceSpec("cpu")->kind, DeviceSpec::Kind::kCpu);
  const Result<DeviceSpec> cuda = ParseDeviceSpec("cuda");
  ASSERT_TRUE(cuda.ok());
  EXPECT_EQ(cuda->kind, DeviceSpec::Kind::kCuda);
  EXPECT_EQ(cuda->index, 0);
  const Result<DeviceSpec> third = ParseDeviceSpec("cuda:3");
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->kind, DeviceSpec::Kind::kCuda);
  EXPECT_EQ(third->index, 3);
}

TEST(DeviceSpecTest, RejectsEverythingElseListingTheValidForms) {
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1x", "cuda:0:1", "mps"}) {
    const Result<DeviceSpec> spec = ParseDeviceSpec(bad);
    ASSERT_FALSE(spec.ok()) << bad;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(spec.status().message().find("auto, cpu, cuda, cuda:N"), std::string::npos);
  }
}

}  // namespace
}  // namespace fedlora::client
