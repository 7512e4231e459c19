// subprocess.h — real child processes for integration tests: start a binary, read its output as
// it appears, wait for a line matching a pattern, signal it, collect its exit status.
//
// Waiting is event-driven: a reader thread wakes waiters whenever output arrives or the child
// closes its output. Every wait has a generous bound that only guards against a hung test.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace fedlora::testing {

class Subprocess {
 public:
  // Starts argv[0] with stdout and stderr captured (and copied to `log_path` if not empty).
  Subprocess(std::vector<std::string> argv, std::string log_path = "")
      : argv_(std::move(argv)), log_(log_path.empty() ? nullptr : new std::ofstream(log_path)) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      std::vector<char*> args;
      for (std::string& a : argv_) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      std::fprintf(stderr, "execv %s: %s\n", args[0], std::strerror(errno));
      _exit(127);
    }
    close(fds[1]);
    read_fd_ = fds[0];
    reader_ = std::thread([this] { ReadLoop(); });
  }

  ~Subprocess() {
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      Wait(std::chrono::seconds(30));
    }
    if (reader_.joinable()) reader_.join();
    close(read_fd_);
  }

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // Waits until the output contains a match for `pattern`; returns the whole match followed by
  // its groups, or nullopt if the process ended or `limit` passed first.
  std::optional<std::vector<std::string>> WaitFor(
      const std::string& pattern, std::chrono::seconds limit = std::chrono::seconds(120)) {
    const std::regex re(pattern);
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (true) {
      std::smatch m;
      if (std::regex_search(output_, m, re)) {
        std::vector<std::string> groups;
        for (const auto& g : m) groups.push_back(g.str());
        return groups;
      }
      if (eof_) return std::nullopt;
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) return std::nullopt;
    }
  }

  void Signal(int sig) { ::kill(pid_, sig); }

  // Waits for the child to exit (it closes its output first) and returns its exit code, 128 +
  // signal if killed, or -1 if `limit` passed (the child is then killed).
  int Wait(std::chrono::seconds limit = std::chrono::seconds(120)) {
    if (reaped_) return exit_code_;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, limit, [&] { return eof_; })) {
        lock.unlock();
        ::kill(pid_, SIGKILL);
        lock.lock();
        cv_.wait(lock, [&] { return eof_; });
        timed_out_ = true;
      }
    }
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    exit_code_ = timed_out_             ? -1
                 : WIFEXITED(status)   ? WEXITSTATUS(status)
                 : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                       : -2;
    return exit_code_;
  }

  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }
  pid_t pid() const { return pid_; }

 private:
  void ReadLoop() {
    char buf[4096];
    while (true) {
      const ssize_t n = read(read_fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (n <= 0) {
        eof_ = true;
        cv_.notify_all();
        return;
      }
      output_.append(buf, static_cast<std::size_t>(n));
      if (log_) log_->write(buf, n).flush();
      cv_.notify_all();
    }
  }

  std::vector<std::string> argv_;
  std::unique_ptr<std::ofstream> log_;
  pid_t pid_ = -1;
  int read_fd_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string output_;   // Guarded by mu_.
  bool eof_ = false;     // Guarded by mu_.
  bool reaped_ = false;
  bool timed_out_ = false;
  int exit_code_ = 0;
};

}  // namespace fedlora::testing
