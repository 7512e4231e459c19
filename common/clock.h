// clock.h — time as an injected dependency.
//
// Deadlines, heartbeats and round timers read a Clock, never std::chrono directly, so tests can
// drive time with FakeClock instead of sleeping. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>

namespace fedlora {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;  // Monotonic.
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
};

// Starts at an arbitrary epoch and moves only when told.
class FakeClock final : public Clock {
 public:
  TimePoint Now() const override {
    return TimePoint(std::chrono::nanoseconds(now_ns_.load(std::memory_order_acquire)));
  }
  void Advance(std::chrono::nanoseconds d) { now_ns_.fetch_add(d.count(), std::memory_order_acq_rel); }

 private:
  std::atomic<std::int64_t> now_ns_{1'000'000'000};
};

// Milliseconds from `from` to `to`, clamped at 0.
inline std::int64_t MillisUntil(Clock::TimePoint from, Clock::TimePoint to) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
  return d < 0 ? 0 : d;
}

}  // namespace fedlora
