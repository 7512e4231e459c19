// process.h — process-level setup shared by the executables.
#pragma once

#include <cstdint>

namespace fedlora {

// Raises glibc's malloc trim and mmap thresholds. Training loops allocate and free large tensors
// every step; with the defaults glibc returns that memory to the kernel and faults it back in,
// which cost 10-25% of step time here.
void TuneMallocForTraining();

// On the first SIGINT or SIGTERM calls `stop(arg)` from the signal handler, so `stop` must be
// async-signal-safe (Coordinator::Stop and ClientSession::Stop are). A second signal exits
// immediately with status 130. SIGPIPE is ignored. Call from main(); call again with a no-op
// before the object `arg` points to is destroyed.
void OnStopSignal(void (*stop)(void*), void* arg);

// On SIGHUP calls `reload(arg)` from the signal handler (async-signal-safe, like
// Coordinator::Reload). Call again with a no-op before the object `arg` points to is destroyed.
void OnReloadSignal(void (*reload)(void*), void* arg);

// Raises this process's open-file limit (RLIMIT_NOFILE) to its hard limit, so a coordinator can
// hold one TCP connection per client beyond the common soft default of 1,024. Returns the soft
// limit in force afterwards (0 if the system does not say).
std::uint64_t RaiseOpenFileLimit();

// Memory of this process and machine, in bytes; 0 where the system does not say.
std::uint64_t PeakRssBytes();     // Largest resident set so far (getrusage).
std::uint64_t CurrentRssBytes();  // Resident set now (/proc/self/statm).
std::uint64_t PhysicalMemoryBytes();

}  // namespace fedlora
