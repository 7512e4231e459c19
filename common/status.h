// status.h — expected failures as values: Status, Result<T>, and the macros around them.
//
// Expected failures (a peer sent garbage, a file is malformed, a client missed a deadline) are
// returned as Status / Result<T>. Broken invariants (bugs) abort through FEDLORA_CHECK, which is
// never used on input from the network or a file. Libraries that throw (LibTorch, yaml-cpp,
// Cap'n Proto, cppzmq) are wrapped where we call them.
//
// The codes are chosen by what the caller should do next, as in Abseil.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace fedlora {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // Input is malformed; retrying the same input is pointless.
  kNotFound,            // A named file, key, tensor or client does not exist.
  kAlreadyExists,
  kFailedPrecondition,  // System not in the required state; fix the state, then retry.
  kAborted,             // Retry at a higher level (e.g. restart the round).
  kUnavailable,         // Transient; retry this call with backoff.
  kDeadlineExceeded,
  kDataLoss,            // Bytes were corrupted (bad checksum, truncated frame).
  kUnauthenticated,
  kPermissionDenied,
  kResourceExhausted,   // A size or count limit was hit.
  kUnimplemented,
  kCancelled,           // The operation was stopped on request (shutdown).
  kInternal,            // An invariant broke; a bug.
};

std::string_view StatusCodeName(StatusCode code);

// Builds a string from any mix of values that std::ostream can print.
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return std::move(out).str();
}

// A status: OK, or a code plus a message that names what failed and where. `detail` is an
// optional machine-readable sub-code owned by the layer that set it (the wire codec puts a
// wire::ErrorCode there so the coordinator can answer a peer with the precise protocol error).
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, std::uint32_t detail = 0)
      : code_(code), detail_(detail), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  std::uint32_t detail() const { return detail_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: config.yaml:3: unknown key 'rouds'"
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context` ("loading x.yaml: ...").
  Status WithContext(std::string_view context) const;
  Status WithDetail(std::uint32_t detail) const { return Status(code_, message_, detail); }

  friend bool operator==(const Status&, const Status&) = default;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::uint32_t detail_ = 0;
  std::string message_;
};

inline Status OkStatus() { return Status(); }

template <typename... Args>
Status MakeStatus(StatusCode code, const Args&... args) {
  return Status(code, StrCat(args...));
}
template <typename... Args>
Status InvalidArgument(const Args&... args) {
  return MakeStatus(StatusCode::kInvalidArgument, args...);
}
template <typename... Args>
Status NotFound(const Args&... args) {
  return MakeStatus(StatusCode::kNotFound, args...);
}
template <typename... Args>
Status FailedPrecondition(const Args&... args) {
  return MakeStatus(StatusCode::kFailedPrecondition, args...);
}
template <typename... Args>
Status Unavailable(const Args&... args) {
  return MakeStatus(StatusCode::kUnavailable, args...);
}
template <typename... Args>
Status DataLoss(const Args&... args) {
  return MakeStatus(StatusCode::kDataLoss, args...);
}
template <typename... Args>
Status ResourceExhausted(const Args&... args) {
  return MakeStatus(StatusCode::kResourceExhausted, args...);
}
template <typename... Args>
Status Internal(const Args&... args) {
  return MakeStatus(StatusCode::kInternal, args...);
}
template <typename... Args>
Status Aborted(const Args&... args) {
  return MakeStatus(StatusCode::kAborted, args...);
}
template <typename... Args>
Status Unimplemented(const Args&... args) {
  return MakeStatus(StatusCode::kUnimplemented, args...);
}
template <typename... Args>
Status PermissionDenied(const Args&... args) {
  return MakeStatus(StatusCode::kPermissionDenied, args...);
}
template <typename... Args>
Status Unauthenticated(const Args&... args) {
  return MakeStatus(StatusCode::kUnauthenticated, args...);
}

[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const std::string& message);

}  // namespace fedlora

// Aborts with file, line and the condition when an invariant is broken. For bugs only: never for
// input from a file, a flag or the network. Prefixed because Debian's LibTorch defines glog's CHECK.
#define FEDLORA_CHECK(cond)                                                    \
  do {                                                                         \
    if (!(cond)) ::fedlora::CheckFailed(__FILE__, __LINE__, #cond, "");        \
  } while (false)
#define FEDLORA_CHECK_MSG(cond, ...)                                           \
  do {                                                                         \
    if (!(cond))                                                               \
      ::fedlora::CheckFailed(__FILE__, __LINE__, #cond,                        \
                             ::fedlora::StrCat(__VA_ARGS__));                  \
  } while (false)

namespace fedlora {

// Either a T or a non-OK Status. Replace with std::expected when we move to C++23.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr.
  Result(Status error) : v_(std::move(error)) {  // NOLINT
    FEDLORA_CHECK_MSG(!std::get<Status>(v_).ok(), "Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? OkStatus() : std::get<Status>(v_); }

  const T& value() const& {
    FEDLORA_CHECK_MSG(ok(), "value() on error: ", std::get<Status>(v_).ToString());
    return std::get<T>(v_);
  }
  T& value() & {
    FEDLORA_CHECK_MSG(ok(), "value() on error: ", std::get<Status>(v_).ToString());
    return std::get<T>(v_);
  }
  T&& value() && {
    FEDLORA_CHECK_MSG(ok(), "value() on error: ", std::get<Status>(v_).ToString());
    return std::get<T>(std::move(v_));
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace fedlora

#define FEDLORA_STATUS_CONCAT_INNER(a, b) a##b
#define FEDLORA_STATUS_CONCAT(a, b) FEDLORA_STATUS_CONCAT_INNER(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define FEDLORA_RETURN_IF_ERROR(expr)                                   \
  do {                                                                  \
    if (::fedlora::Status fedlora_s_ = (expr); !fedlora_s_.ok()) {      \
      return fedlora_s_;                                                \
    }                                                                   \
  } while (false)

// `FEDLORA_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a Result or returns its error.
#define FEDLORA_ASSIGN_OR_RETURN(lhs, expr) \
  FEDLORA_ASSIGN_OR_RETURN_IMPL(FEDLORA_STATUS_CONCAT(fedlora_r_, __LINE__), lhs, expr)
#define FEDLORA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
