#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>

namespace fedlora {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};

spdlog::logger& Logger() {
  // stderr, unbuffered per line; "[2026-11-23 23:40:01.123] [info] message".
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_logger_mt("fedlora");
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

}  // namespace

Result<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  return InvalidArgument("unknown log level '", name, "' (expected debug, info, warn, error, off)");
}

void SetLogLevel(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }

bool LogEnabled(LogLevel level) {
  return level != LogLevel::kOff && level >= g_level.load(std::memory_order_relaxed);
}

void LogMessage(LogLevel level, std::string_view message) {
  switch (level) {
    case LogLevel::kDebug: Logger().debug("{}", message); break;
    case LogLevel::kInfo: Logger().info("{}", message); break;
    case LogLevel::kWarn: Logger().warn("{}", message); break;
    case LogLevel::kError: Logger().error("{}", message); break;
    case LogLevel::kOff: break;
  }
}

}  // namespace fedlora
