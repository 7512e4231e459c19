// log.h — process-wide logging, one line per event, to stderr.
//
// A thin door to spdlog (whose headers cost ~3 s per translation unit, so they stay in log.cc).
// Messages are built with StrCat: LogInfo("round ", round, ": ", n, " updates").
// Thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fedlora {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// Parses "debug", "info", "warn", "error", "off".
Result<LogLevel> ParseLogLevel(std::string_view name);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogMessage(LogLevel level, std::string_view message);

template <typename... Args>
void LogDebug(const Args&... args) {
  if (LogEnabled(LogLevel::kDebug)) LogMessage(LogLevel::kDebug, StrCat(args...));
}
template <typename... Args>
void LogInfo(const Args&... args) {
  if (LogEnabled(LogLevel::kInfo)) LogMessage(LogLevel::kInfo, StrCat(args...));
}
template <typename... Args>
void LogWarn(const Args&... args) {
  if (LogEnabled(LogLevel::kWarn)) LogMessage(LogLevel::kWarn, StrCat(args...));
}
template <typename... Args>
void LogError(const Args&... args) {
  if (LogEnabled(LogLevel::kError)) LogMessage(LogLevel::kError, StrCat(args...));
}

}  // namespace fedlora
