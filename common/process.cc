#include "common/process.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <csignal>

namespace fedlora {
namespace {

std::atomic<void (*)(void*)> g_stop{nullptr};
std::atomic<void*> g_arg{nullptr};
std::atomic<int> g_signals{0};
std::atomic<void (*)(void*)> g_reload{nullptr};
std::atomic<void*> g_reload_arg{nullptr};

extern "C" void HandleStopSignal(int) {
  if (g_signals.fetch_add(1) > 0) _exit(130);
  if (auto stop = g_stop.load()) stop(g_arg.load());
}

extern "C" void HandleReloadSignal(int) {
  if (auto reload = g_reload.load()) reload(g_reload_arg.load());
}

}  // namespace

void TuneMallocForTraining() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void OnStopSignal(void (*stop)(void*), void* arg) {
  g_arg.store(arg);
  g_stop.store(stop);
  struct sigaction action {};
  action.sa_handler = HandleStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

void OnReloadSignal(void (*reload)(void*), void* arg) {
  g_reload_arg.store(arg);
  g_reload.store(reload);
  struct sigaction action {};
  action.sa_handler = HandleReloadSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGHUP, &action, nullptr);
}

std::uint64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(limit.rlim_cur);
}

std::uint64_t PeakRssBytes() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB.
}

std::uint64_t CurrentRssBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  const long page = sysconf(_SC_PAGESIZE);
  return read == 2 && page > 0 ? resident * static_cast<std::uint64_t>(page) : 0;
}

std::uint64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page)
                               : 0;
}

}  // namespace fedlora
