// The open files and ZeroMQ sockets a simulator process needs are set, or refused naming the
// limit, before any session starts (issue 15).
#include "sim/session_limits.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>

namespace fedlora::sim {
namespace {

TEST(SessionLimitsTest, TheContextGetsTwoSocketsPerSessionAboveZeroMqsDefault) {
  net::Context context;
  const Result<SessionLimits> limits = ApplySessionLimits(2000, 0, context);
  ASSERT_TRUE(limits.ok()) << limits.status().ToString();
  EXPECT_EQ(limits->max_sockets, 2 * 2000 + kSocketMargin);
  EXPECT_EQ(context.max_sockets(), static_cast<int>(limits->max_sockets));
  EXPECT_GT(context.max_sockets(), 1023);  // ZeroMQ's default, the old ceiling.
  EXPECT_GE(limits->open_files, limits->files_needed);
}

TEST(SessionLimitsTest, ADeliberateCapIsSetAsGiven) {
  net::Context context;
  const Result<SessionLimits> limits = ApplySessionLimits(10, 8, context);
  ASSERT_TRUE(limits.ok()) << limits.status().ToString();
  EXPECT_EQ(context.max_sockets(), 8);
  EXPECT_NE(DescribeLimits(*limits).find("max_sockets 8"), std::string::npos);
}

TEST(SessionLimitsTest, MoreSocketsThanThisZeroMqAllowsAreRefusedNamingItsLimit) {
  net::Context context;
  const Result<SessionLimits> limits = ApplySessionLimits(10, 1 << 30, context);
  ASSERT_EQ(limits.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(limits.status().message().find("this libzmq allows at most"), std::string::npos)
      << limits.status().message();
}

// Runs in a death-test child: lowers the hard limit to 512 open files and asks for 1,000
// sessions (~2,256 files). Exits 7 when refused with kResourceExhausted, printing why.
[[noreturn]] void AskForMoreSessionsThanFiles() {
  rlimit low{};
  low.rlim_cur = low.rlim_max = 512;
  if (setrlimit(RLIMIT_NOFILE, &low) != 0) std::_Exit(3);
  net::Context context;
  const Result<SessionLimits> limits = ApplySessionLimits(1000, 0, context);
  std::fprintf(stderr, "%s\n", limits.status().ToString().c_str());
  std::_Exit(limits.status().code() == StatusCode::kResourceExhausted ? 7 : 1);
}

TEST(SessionLimitsDeathTest, SessionsBeyondTheOpenFileLimitAreRefusedBeforeAnyStarts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(AskForMoreSessionsThanFiles(), ::testing::ExitedWithCode(7),
              "RLIMIT_NOFILE 512.*--workers");
}

}  // namespace
}  // namespace fedlora::sim
