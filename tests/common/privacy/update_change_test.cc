#include "common/privacy/update_change.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedlora::privacy {
namespace {

TensorMap Start() {
  return {{"m.lora_A.weight", MakeF64({2, 3}, std::vector<double>{1, 2, 3, 4, 5, 6})},
          {"m.lora_B.weight", MakeF64({3, 2}, std::vector<double>{0, 0, 0, 0, 0, 0})}};
}

TEST(UpdateChangeTest, NormIsOverEveryTensorAsOneVectorAndAFreshTensorCountsWhole) {
  TensorMap uploaded = Start();
  uploaded["m.lora_A.weight"] = MakeF64({2, 3}, std::vector<double>{1, 2, 3, 4, 5, 9});  // +3
  uploaded["m.lora_B.weight"] = MakeF64({3, 2}, std::vector<double>{0, 4, 0, 0, 0, 0});  // +4
  EXPECT_DOUBLE_EQ(ChangeNorm(uploaded, Start()), 5.0);
  TensorMap fresh{{"n.lora_A.weight", MakeF64({1, 2}, std::vector<double>{3, 4})}};
  EXPECT_DOUBLE_EQ(ChangeNorm(fresh, Start()), 5.0);  // No reference: all of it is change.
}

TEST(UpdateChangeTest, APrunedUploadIsMeasuredAgainstTheLeadingBlockOfItsTask) {
  TensorMap pruned{{"m.lora_A.weight", MakeF64({1, 3}, std::vector<double>{1, 2, 5})}};
  EXPECT_DOUBLE_EQ(ChangeNorm(pruned, Start()), 2.0);  // Row 0 of A is {1, 2, 3}.
}

TEST(UpdateChangeTest, ClippingScalesTheChangeNotTheUploadAndLeavesSmallChangesAlone) {
  TensorMap uploaded = Start();
  uploaded["m.lora_A.weight"] = MakeF64({2, 3}, std::vector<double>{1, 2, 3, 4, 5, 9});
  uploaded["m.lora_B.weight"] = MakeF64({3, 2}, std::vector<double>{0, 4, 0, 0, 0, 0});
  TensorMap small = uploaded;
  const ClipOutcome untouched = ClipChange(small, Start(), 5.0);
  EXPECT_FALSE(untouched.clipped);
  EXPECT_EQ(small, uploaded);
  const ClipOutcome clipped = ClipChange(uploaded, Start(), 1.0);
  EXPECT_TRUE(clipped.clipped);
  EXPECT_DOUBLE_EQ(clipped.norm, 5.0);
  EXPECT_NEAR(ChangeNorm(uploaded, Start()), 1.0, 1e-12);
  EXPECT_NEAR(ToDoubles(uploaded.at("m.lora_A.weight"))[5], 6.0 + 3.0 / 5.0, 1e-12);
  EXPECT_NEAR(ToDoubles(uploaded.at("m.lora_B.weight"))[1], 4.0 / 5.0, 1e-12);
}

// The coordinator recomputes the norm from the uploaded f32 / bf16 values: after rounding to the
// dtype it must still be within the clip, not just before it.
TEST(UpdateChangeTest, TheClippedChangeIsWithinTheBoundAfterRoundingToTheDtype) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<double> start(4096), trained(4096);
    for (std::size_t i = 0; i < start.size(); ++i) {
      start[i] = 0.5 + 0.001 * static_cast<double>(i % 97);
      trained[i] = start[i] + 0.01 * std::sin(static_cast<double>(i));
    }
    const TensorMap reference{{"w", FromDoubles(dtype, {64, 64}, start)}};
    TensorMap uploaded{{"w", FromDoubles(dtype, {64, 64}, trained)}};
    const double bound = 0.1 * ChangeNorm(uploaded, reference);
    ASSERT_TRUE(ClipChange(uploaded, reference, bound).clipped);
    EXPECT_LE(ChangeNorm(uploaded, reference), bound) << DTypeName(dtype);
    // f32 keeps almost all of it; bf16's 8-bit mantissa may round a change this small away (the
    // clip then leaves no change, which is within the bound too).
    if (dtype == DType::kF32) EXPECT_GT(ChangeNorm(uploaded, reference), 0.99 * bound);
  }
}

}  // namespace
}  // namespace fedlora::privacy
