#include "sim/session_limits.h"

#include "common/log.h"
#include "common/process.h"

namespace fedlora::sim {

Result<SessionLimits> ApplySessionLimits(std::uint32_t sessions, std::uint32_t max_sockets,
                                         net::Context& context) {
  SessionLimits limits;
  limits.sessions = sessions;
  limits.open_files = RaiseOpenFileLimit();
  limits.files_needed = std::uint64_t{kFilesPerSession} * sessions + kFileMargin;
  if (limits.open_files != 0 && limits.files_needed > limits.open_files) {
    return MakeStatus(StatusCode::kResourceExhausted, sessions, " client sessions need about ",
                      limits.files_needed, " open files (", kFilesPerSession,
                      " per session), above this process's limit RLIMIT_NOFILE ", limits.open_files,
                      " (already raised to its hard limit): raise the hard ",
                      "limit (ulimit -Hn; LimitNOFILE= under systemd) or spread the clients over ",
                      "processes with --workers");
  }
  const std::uint64_t wanted =
      max_sockets != 0 ? max_sockets : std::uint64_t{kSocketsPerSession} * sessions + kSocketMargin;
  if (wanted > static_cast<std::uint64_t>(INT32_MAX)) {
    return MakeStatus(StatusCode::kResourceExhausted, sessions, " client sessions need ", wanted,
                      " ZeroMQ sockets: spread the clients over processes with --workers");
  }
  if (Status s = context.SetMaxSockets(static_cast<int>(wanted)); !s.ok()) {
    return s.WithContext(StrCat(sessions, " client sessions (", kSocketsPerSession,
                                " sockets each); spread them over processes with --workers"));
  }
  limits.max_sockets = static_cast<std::uint32_t>(wanted);
  LogDebug("session limits: ", DescribeLimits(limits), " for ", sessions, " client sessions");
  return limits;
}

std::string DescribeLimits(const SessionLimits& limits) {
  return StrCat("ZeroMQ max_sockets ", limits.max_sockets, ", RLIMIT_NOFILE ", limits.open_files,
                " (about ", limits.files_needed, " needed)");
}

}  // namespace fedlora::sim
