// progress.h — local-training progress for people: step, loss, tokens per second and the time
// left, as one line that rewrites itself on a terminal, or as a log line every `interval` (and
// at the last step) otherwise. Torch-free: the trainers report each step's numbers and this
// formats and throttles them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace fedlora::client {

// What a trainer knows after a step.
struct StepProgress {
  std::uint64_t step = 0;  // Steps done (1-based after the first).
  std::uint64_t total_steps = 0;
  double loss = 0;           // This step's mean token loss.
  std::uint64_t tokens = 0;  // Predicted tokens so far.
  double seconds = 0;        // Since training began.
};
using ProgressFn = std::function<void(const StepProgress&)>;

// "client 'alice' round 3: step 12/30, loss 3.2100, 1234 tokens/s, ETA 8 s".
std::string ProgressLine(std::string_view label, const StepProgress& p);

// The latest step of the training in progress (or just finished), for a client's /status and
// /metrics. Thread-safe: the trainer writes it, the ops endpoint reads it.
class TrainingProgressBoard {
 public:
  struct Entry {
    std::uint64_t round = 0;
    StepProgress step;
  };
  void Update(std::uint64_t round, const StepProgress& p) {
    std::lock_guard<std::mutex> lock(mu_);
    entry_ = Entry{round, p};
  }
  std::optional<Entry> Latest() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entry_;
  }

 private:
  mutable std::mutex mu_;
  std::optional<Entry> entry_;
};

class ProgressReporter {
 public:
  // `line` receives each line to show: `overwrite` true on a terminal (the caller redraws the
  // same line: "\r...\x1b[K"), false for a log line; `last` for the final step's line.
  using Sink = std::function<void(const std::string& line, bool overwrite, bool last)>;

  ProgressReporter(std::string label, bool terminal, std::chrono::milliseconds interval, Sink sink)
      : label_(std::move(label)),
        terminal_(terminal),
        interval_(interval),
        sink_(std::move(sink)) {}

  // Shows `p` if it is the last step, or on a terminal at most every 200 ms, or in logs every
  // `interval` (by p.seconds, the trainer's own clock).
  void operator()(const StepProgress& p);

  // A reporter for this process: a rewriting line on stderr when stderr is a terminal, else
  // info log lines every 10 s.
  static ProgressFn ForThisProcess(std::string label);

 private:
  std::string label_;
  bool terminal_;
  std::chrono::milliseconds interval_;
  Sink sink_;
  double last_shown_s_ = -1;
};

}  // namespace fedlora::client
