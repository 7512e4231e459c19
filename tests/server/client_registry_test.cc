#include "server/client_registry.h"

#include <gtest/gtest.h>

namespace fedlora::server {
namespace {

using std::chrono::seconds;

const Clock::TimePoint kT0 = Clock::TimePoint{} + seconds(1000);
constexpr auto kWindow = seconds(5);

TEST(SilenceCutoffTest, WithAnEmptyQueueSilenceCountsUpToNow) {
  EXPECT_EQ(SilenceCutoff(kT0, kT0, kWindow), kT0 - kWindow);
}

TEST(SilenceCutoffTest, WhileTheQueueIsBehindSilenceCountsOnlyUpToTheLastCatchUp) {
  // Last caught up 3 s ago: a heartbeat sent since may be waiting unread.
  EXPECT_EQ(SilenceCutoff(kT0, kT0 - seconds(3), kWindow), kT0 - seconds(3) - kWindow);
}

TEST(SilenceCutoffTest, ABacklogOlderThanOneWindowProtectsNobodyFurther) {
  // A flood that kept the queue full for a minute: clients silent for two windows are gone.
  EXPECT_EQ(SilenceCutoff(kT0, kT0 - seconds(60), kWindow), kT0 - 2 * kWindow);
}

TEST(ClientRegistryTest, ExpiresOnlyClientsSilentSinceBeforeTheCutoff) {
  ClientRegistry registry;
  ClientConnection quiet{.id = "quiet", .route = "r1"};
  quiet.last_heard = kT0 - seconds(9);
  ClientConnection busy{.id = "busy", .route = "r2"};
  busy.last_heard = kT0 - seconds(6);
  registry.Admit(quiet);
  registry.Admit(busy);
  // Caught up 3 s ago: only a client silent for the window before that is gone.
  EXPECT_EQ(registry.ExpireSilentSince(SilenceCutoff(kT0, kT0 - seconds(3), kWindow)),
            std::vector<std::string>{"quiet"});
  EXPECT_NE(registry.FindById("busy"), nullptr);
  EXPECT_EQ(registry.FindByRoute("r1"), nullptr);
}

}  // namespace
}  // namespace fedlora::server
