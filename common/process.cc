#include "common/process.h"

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

namespace fedlora {
namespace {

std::atomic<void (*)(void*)> g_stop{nullptr};
std::atomic<void*> g_arg{nullptr};
std::atomic<int> g_signals{0};

extern "C" void HandleStopSignal(int) {
  if (g_signals.fetch_add(1) > 0) _exit(130);
  if (auto stop = g_stop.load()) stop(g_arg.load());
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

}  // namespace fedlora
