#include "common/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace fedlora {
namespace {

TEST(TensorTest, ValidateRejectsByteCountThatDisagreesWithShape) {
  Tensor t{DType::kF32, {2, 3}, std::vector<std::byte>(20)};
  const Status s = Validate(t, "q.lora_A");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("q.lora_A"), std::string::npos);
  t.data.resize(24);
  EXPECT_TRUE(Validate(t).ok());
}

TEST(TensorTest, NumElementsRejectsNegativeAndOverflowingShapes) {
  EXPECT_EQ(NumElements(std::vector<std::int64_t>{2, 3, 4}).value(), 24);
  EXPECT_EQ(NumElements(std::vector<std::int64_t>{}).value(), 1);
  EXPECT_FALSE(NumElements(std::vector<std::int64_t>{2, -1}).ok());
  EXPECT_FALSE(NumElements(std::vector<std::int64_t>{1ll << 40, 1ll << 40}).ok());
  // Element counts whose byte size would overflow 64 bits are refused outright.
  EXPECT_FALSE(NumElements(std::vector<std::int64_t>{1ll << 62}).ok());
  EXPECT_FALSE(Validate(Tensor{DType::kF32, {1ll << 62}, {}}).ok());
}

TEST(TensorTest, BF16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBF16(1.0f), 0x3F80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa.
  EXPECT_EQ(FloatToBF16(1.0f + 1.0f / 256), 0x3F80);
  EXPECT_EQ(FloatToBF16(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(BF16ToFloat(0x4049), 3.140625f);
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(TensorTest, F16ConversionMatchesIeeeHalfPrecision) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);          // Rounds up to infinity.
  EXPECT_EQ(FloatToF16(5.960464477539063e-08f), 0x0001);  // Smallest subnormal.
  EXPECT_EQ(F16ToFloat(0x0001), 5.960464477539063e-08f);
  EXPECT_EQ(F16ToFloat(0x3555), 0.333251953125f);
  // Every finite half survives a round trip through float.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;
    ASSERT_EQ(FloatToF16(F16ToFloat(static_cast<std::uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(TensorTest, DoublesRoundTripThroughEveryDType) {
  const std::vector<double> values = {0.0, -1.5, 0.25, 1024.0};
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}) {
    const Tensor t = FromDoubles(d, {2, 2}, values);
    EXPECT_EQ(t.data.size(), 4 * ByteWidth(d));
    EXPECT_EQ(ToDoubles(t), values) << DTypeName(d);
  }
}

TEST(TensorTest, AllFiniteSpotsNanAndInfinityInEveryDType) {
  const double inf = std::numeric_limits<double>::infinity();
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}) {
    EXPECT_TRUE(AllFinite(FromDoubles(d, {2}, std::vector<double>{1.0, -2.0})));
    EXPECT_FALSE(AllFinite(FromDoubles(d, {2}, std::vector<double>{1.0, inf})));
    EXPECT_FALSE(AllFinite(FromDoubles(d, {2}, std::vector<double>{std::nan(""), 0})));
  }
}

TEST(TensorTest, ParseDTypeAcceptsCommonSpellings) {
  EXPECT_EQ(ParseDType("bf16"), DType::kBF16);
  EXPECT_EQ(ParseDType("F32"), DType::kF32);
  EXPECT_EQ(ParseDType("float16"), DType::kF16);
  EXPECT_FALSE(ParseDType("int8").has_value());
}

}  // namespace
}  // namespace fedlora
