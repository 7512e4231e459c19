// The wire <-> LibTorch bridge (common/lora/tensor_bridge.h) and its client-side forwarder.
#include "common/lora/tensor_bridge.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "client/torch_bridge.h"
#include "tests/lora/lora_test_util.h"

namespace fedlora::lora {
namespace {

TEST(TensorBridgeTest, RoundTripsEveryWireDtypeBitExactly) {
  const at::Tensor source = at::arange(12, at::kDouble).reshape({3, 4}) / 7.0;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dtype));
    ASSERT_OK_AND_ASSIGN(const Tensor wire, ToWire(source, dtype));
    EXPECT_EQ(wire.dtype, dtype);
    EXPECT_EQ(wire.shape, (std::vector<std::int64_t>{3, 4}));
    ASSERT_OK_AND_ASSIGN(const at::Tensor back, FromWire(wire));
    ASSERT_OK_AND_ASSIGN(const Tensor again, ToWire(back));
    EXPECT_EQ(again, wire);
    // Widening to f64 is exact, so it round-trips the same bytes too.
    ASSERT_OK_AND_ASSIGN(const at::Tensor wide, FromWireAs(wire, at::kDouble));
    EXPECT_EQ(wide.scalar_type(), at::kDouble);
    ASSERT_OK_AND_ASSIGN(const Tensor narrowed, ToWire(wide, dtype));
    EXPECT_EQ(narrowed, wire);
    EXPECT_EQ(ToDoubles(wire), std::vector<double>(wide.data_ptr<double>(),
                                                   wide.data_ptr<double>() + wide.numel()));
  }
}

TEST(TensorBridgeTest, F64SurvivesTheWireUnchanged) {
  const at::Tensor x = lora_test::RandN(5, 3, 7);
  ASSERT_OK_AND_ASSIGN(const Tensor wire, ToWire(x));
  EXPECT_EQ(wire.dtype, DType::kF64);
  ASSERT_OK_AND_ASSIGN(const at::Tensor back, FromWireAs(wire, at::kDouble));
  EXPECT_TRUE(at::equal(back, x));
  ASSERT_OK_AND_ASSIGN(const at::Tensor as_float, FromWireAsFloat(wire));
  EXPECT_EQ(as_float.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(as_float, x.to(at::kFloat)));
}

TEST(TensorBridgeTest, ToWireCopiesNonContiguousTensorsInLogicalOrder) {
  const at::Tensor t = at::arange(6, at::kFloat).reshape({2, 3}).t();
  ASSERT_OK_AND_ASSIGN(const Tensor wire, ToWire(t));
  EXPECT_EQ(ToFloats(wire), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(TensorBridgeTest, FromWireOwnsItsMemory) {
  Tensor wire = MakeF64({2}, std::vector<double>{1.0, 2.0});
  ASSERT_OK_AND_ASSIGN(const at::Tensor t, FromWire(wire));
  wire.data.assign(wire.data.size(), std::byte{0});
  EXPECT_EQ(t[1].item<double>(), 2.0);
}

TEST(TensorBridgeTest, RejectsBadBytesIntegerTensorsAndIntegerTargets) {
  Tensor wire = MakeF32({2, 2}, std::vector<float>{1, 2, 3, 4});
  EXPECT_EQ(FromWireAs(wire, at::kLong).status().code(), StatusCode::kInvalidArgument);
  wire.data.pop_back();
  EXPECT_EQ(FromWire(wire).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FromWireAs(wire, at::kDouble).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ToWire(at::arange(3, at::kLong)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ToWire(at::Tensor()).status().code(), StatusCode::kInvalidArgument);
}

TEST(TensorBridgeTest, TheClientForwarderNamesTheSameFunctions) {
  const Tensor wire = MakeF32({2}, std::vector<float>{1.5f, -2.0f});
  ASSERT_OK_AND_ASSIGN(const at::Tensor t, client::FromWireAs(wire, at::kDouble));
  ASSERT_OK_AND_ASSIGN(const Tensor back, client::ToWire(t, DType::kF32));
  EXPECT_EQ(back, wire);
  ASSERT_OK_AND_ASSIGN(const at::Tensor f, client::FromWireAsFloat(wire));
  ASSERT_OK_AND_ASSIGN(const at::Tensor g, client::FromWire(wire));
  EXPECT_TRUE(at::equal(f, g));
}

}  // namespace
}  // namespace fedlora::lora
