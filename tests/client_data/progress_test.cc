#include "client/train/progress.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;

struct Shown {
  std::string line;
  bool overwrite;
  bool last;
};

ProgressReporter Recorder(bool terminal, std::vector<Shown>* shown) {
  return ProgressReporter("client 'alice' round 3", terminal, std::chrono::seconds(10),
                          [shown](const std::string& line, bool overwrite, bool last) {
                            shown->push_back({line, overwrite, last});
                          });
}

TEST(ProgressTest, ALineSaysStepLossThroughputAndTimeLeft) {
  EXPECT_EQ(
      ProgressLine("client 'alice' round 3",
                   {.step = 12, .total_steps = 30, .loss = 3.21, .tokens = 12000, .seconds = 6}),
      "client 'alice' round 3: step 12/30, loss 3.2100, 2000 tokens/s, ETA 9 s");
  EXPECT_THAT(
      ProgressLine("x", {.step = 1, .total_steps = 200, .loss = 4, .tokens = 10, .seconds = 30}),
      HasSubstr("ETA 1 h 39 min"));
  EXPECT_THAT(
      ProgressLine("x", {.step = 30, .total_steps = 30, .loss = 2, .tokens = 10, .seconds = 75}),
      HasSubstr("done in 1 min 15 s"));
}

// In logs: one line per 10 s of training, and always the last step's.
TEST(ProgressTest, LogLinesComeEveryIntervalAndAtTheEnd) {
  std::vector<Shown> shown;
  ProgressReporter reporter = Recorder(/*terminal=*/false, &shown);
  for (std::uint64_t step = 1; step <= 30; ++step) {
    reporter({.step = step,
              .total_steps = 30,
              .loss = 3,
              .tokens = step * 100,
              .seconds = static_cast<double>(step)});
  }
  ASSERT_EQ(shown.size(), 3u);  // At 10 s, 20 s, and step 30 (the last).
  EXPECT_THAT(shown[0].line, HasSubstr("step 10/30"));
  EXPECT_THAT(shown[1].line, HasSubstr("step 20/30"));
  EXPECT_THAT(shown[2].line, HasSubstr("step 30/30"));
  EXPECT_FALSE(shown[0].overwrite);
  EXPECT_TRUE(shown[2].last);
  EXPECT_FALSE(shown[1].last);
}

// On a terminal: the line is redrawn at most five times a second.
TEST(ProgressTest, ATerminalLineIsRedrawnAtMostFiveTimesASecond) {
  std::vector<Shown> shown;
  ProgressReporter reporter = Recorder(/*terminal=*/true, &shown);
  for (std::uint64_t step = 1; step <= 100; ++step) {
    reporter({.step = step,
              .total_steps = 100,
              .loss = 3,
              .tokens = step,
              .seconds = static_cast<double>(step) * 0.01});  // 1 s in all.
  }
  EXPECT_GE(shown.size(), 5u);
  EXPECT_LE(shown.size(), 7u);
  for (const Shown& s : shown) EXPECT_TRUE(s.overwrite);
  EXPECT_TRUE(shown.back().last);
  EXPECT_THAT(shown.back().line, HasSubstr("step 100/100"));
}

}  // namespace
}  // namespace fedlora::client
