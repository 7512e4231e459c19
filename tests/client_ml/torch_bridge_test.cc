#include "client/torch_bridge.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

namespace fedlora::client {
namespace {

TEST(TorchBridgeTest, RoundTripsEveryWireDtypeBitExactly) {
  const at::Tensor source = at::arange(12, at::kFloat).reshape({3, 4}) / 7.0;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Result<Tensor> wire = ToWire(source, dtype);
    ASSERT_TRUE(wire.ok()) << wire.status().ToString();
    EXPECT_EQ(wire->dtype, dtype);
    EXPECT_EQ(wire->shape, (std::vector<std::int64_t>{3, 4}));
    const Result<at::Tensor> back = FromWire(*wire);
    ASSERT_TRUE(back.ok());
    const Result<Tensor> again = ToWire(*back);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *wire);  // Same bytes both ways.
  }
}

TEST(TorchBridgeTest, ToWireMatchesTheCommonConversionsForBf16) {
  const std::vector<float> values = {1.0f, -2.5f, 3.14159f, 1e-8f, 65504.0f};
  const at::Tensor t = at::tensor(values);
  const Result<Tensor> wire = ToWire(t, DType::kBF16);
  ASSERT_TRUE(wire.ok());
  const Tensor reference = FromDoubles(DType::kBF16, {5}, std::vector<double>(values.begin(), values.end()));
  EXPECT_EQ(wire->data, reference.data);
}

TEST(TorchBridgeTest, ToWireCopiesNonContiguousTensorsInLogicalOrder) {
  const at::Tensor t = at::arange(6, at::kFloat).reshape({2, 3}).t();  // [3, 2], strided.
  const Result<Tensor> wire = ToWire(t);
  ASSERT_TRUE(wire.ok());
  EXPECT_EQ(ToFloats(*wire), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(TorchBridgeTest, FromWireOwnsItsMemory) {
  Tensor wire = MakeF32({2}, std::vector<float>{1.0f, 2.0f});
  const Result<at::Tensor> t = FromWire(wire);
  ASSERT_TRUE(t.ok());
  wire.data.assign(wire.data.size(), std::byte{0});
  EXPECT_EQ((*t)[1].item<float>(), 2.0f);
}

TEST(TorchBridgeTest, FromWireRejectsBytesThatDisagreeWithTheShape) {
  Tensor wire = MakeF32({2, 2}, std::vector<float>{1, 2, 3, 4});
  wire.data.pop_back();
  EXPECT_EQ(FromWire(wire).status().code(), StatusCode::kInvalidArgument);
}

TEST(TorchBridgeTest, ToWireRejectsIntegerTensors) {
  EXPECT_EQ(ToWire(at::arange(3, at::kLong)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ToWire(at::Tensor()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::client
