#include "common/status.h"

#include <gtest/gtest.h>

namespace fedlora {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd number ", x);
  return x / 2;
}

Result<int> Quarter(int x) {
  FEDLORA_ASSIGN_OR_RETURN(int half, Half(x));
  FEDLORA_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

Status CheckPositive(int x) {
  if (x <= 0) return FailedPrecondition("x = ", x);
  return OkStatus();
}

Status Chain(int x) {
  FEDLORA_RETURN_IF_ERROR(CheckPositive(x));
  return OkStatus();
}

TEST(StatusTest, MessageNamesTheCodeAndTheCause) {
  const Status s = InvalidArgument("config.yaml:3: unknown key '", "rouds", "'");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ToString(), "INVALID_ARGUMENT: config.yaml:3: unknown key 'rouds'");
}

TEST(StatusTest, ContextIsPrefixedAndDetailKept) {
  const Status s = DataLoss("truncated").WithDetail(7).WithContext("reading x");
  EXPECT_EQ(s.message(), "reading x: truncated");
  EXPECT_EQ(s.detail(), 7u);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
}

TEST(StatusTest, AssignOrReturnPropagatesTheFirstError) {
  EXPECT_EQ(Quarter(12).value(), 3);
  const Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "odd number 3");
}

TEST(StatusTest, ReturnIfErrorStopsAtTheFailure) {
  EXPECT_TRUE(Chain(1).ok());
  EXPECT_EQ(Chain(0).code(), StatusCode::kFailedPrecondition);
}

TEST(StatusDeathTest, ValueOfAnErrorAborts) {
  const Result<int> r = Half(3);
  EXPECT_DEATH((void)r.value(), "odd number 3");
}

}  // namespace
}  // namespace fedlora
