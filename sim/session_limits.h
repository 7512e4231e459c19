// session_limits.h — the open files and ZeroMQ sockets a simulator process needs for its client
// sessions, made explicit (issue 15): checked against the process's limits before anything
// starts, so a run too large for them fails at once naming the limit, instead of some sessions
// failing to open while the coordinator waits for them.
//
// Each client session holds at most two ZeroMQ sockets (its DEALER and, over TCP, the monitor of
// its connection); measured, a 2,000-client simulation held 3,615 descriptors (1.8 per session).
// The coordinator and the process itself (model files, logs, the ZAP handler) need a margin.
#pragma once

#include <cstdint>
#include <string>

#include "common/net/zmq_transport.h"
#include "common/status.h"

namespace fedlora::sim {

struct SessionLimits {
  std::uint32_t sessions = 0;      // Client sessions of this process.
  std::uint64_t open_files = 0;    // RLIMIT_NOFILE after raising it to the hard limit.
  std::uint64_t files_needed = 0;  // Estimated for `sessions`.
  std::uint32_t max_sockets = 0;   // Set on the ZeroMQ context.
};

inline constexpr std::uint32_t kSocketsPerSession = 2;
inline constexpr std::uint32_t kFilesPerSession = 2;
inline constexpr std::uint32_t kSocketMargin = 64;
inline constexpr std::uint32_t kFileMargin = 256;

// Raises RLIMIT_NOFILE to its hard limit and sets `context`'s socket limit for `sessions` client
// sessions (or to `max_sockets` when it is not 0: a deliberate cap). kResourceExhausted naming
// RLIMIT_NOFILE, or ZeroMQ's per-context limit, and what to do, when the sessions cannot fit.
// Call before the context's first socket.
Result<SessionLimits> ApplySessionLimits(std::uint32_t sessions, std::uint32_t max_sockets,
                                         net::Context& context);

// "ZeroMQ max_sockets 8, RLIMIT_NOFILE 20000": for errors of sessions that could not open.
std::string DescribeLimits(const SessionLimits& limits);

}  // namespace fedlora::sim
