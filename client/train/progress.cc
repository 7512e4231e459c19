#include "client/train/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "common/log.h"

namespace fedlora::client {

namespace {

constexpr double kTerminalRedrawSeconds = 0.2;

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld h %02lld min", s / 3600, (s % 3600) / 60);
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%lld min %02lld s", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld s", s);
  }
  return buf;
}

}  // namespace

std::string ProgressLine(std::string_view label, const StepProgress& p) {
  const double rate = p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0;
  const double per_step = p.step > 0 ? p.seconds / static_cast<double>(p.step) : NAN;
  const double left =
      per_step * static_cast<double>(p.total_steps - std::min(p.step, p.total_steps));
  char numbers[160];
  std::snprintf(numbers, sizeof numbers, "step %llu/%llu, loss %.4f, %.0f tokens/s, ",
                static_cast<unsigned long long>(p.step),
                static_cast<unsigned long long>(p.total_steps), p.loss, rate);
  return std::string(label) + ": " + numbers +
         (p.step >= p.total_steps ? "done in " + Duration(p.seconds) : "ETA " + Duration(left));
}

void ProgressReporter::operator()(const StepProgress& p) {
  const bool last = p.step >= p.total_steps;
  const double gap =
      terminal_ ? kTerminalRedrawSeconds : std::chrono::duration<double>(interval_).count();
  if (!last && last_shown_s_ >= 0 && p.seconds - last_shown_s_ < gap) return;
  if (!last && last_shown_s_ < 0 && !terminal_ && p.seconds < gap) return;  // Short runs: one line.
  last_shown_s_ = p.seconds;
  sink_(ProgressLine(label_, p), terminal_, last);
}

ProgressFn ProgressReporter::ForThisProcess(std::string label) {
  const bool terminal = ::isatty(STDERR_FILENO) == 1;
  auto reporter = std::make_shared<ProgressReporter>(
      std::move(label), terminal, std::chrono::seconds(10),
      [](const std::string& line, bool overwrite, bool last) {
        if (overwrite) {
          std::fprintf(stderr, "\r%s\x1b[K%s", line.c_str(), last ? "\n" : "");
          std::fflush(stderr);
        } else {
          LogInfo(line);
        }
      });
  return [reporter](const StepProgress& p) { (*reporter)(p); };
}

}  // namespace fedlora::client
