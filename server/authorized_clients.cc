#include "server/authorized_clients.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "common/fs.h"
#include "common/wire/messages.h"

namespace fedlora::server {
namespace {

constexpr std::string_view kSpace = " \t\r";

// The file's lines, without their '\n'. A final line without '\n' is a line too.
std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// Splits off the next whitespace-separated token of `rest`.
std::string_view NextToken(std::string_view* rest) {
  const std::size_t b = rest->find_first_not_of(kSpace);
  if (b == std::string_view::npos) {
    *rest = {};
    return {};
  }
  const std::size_t e = rest->find_first_of(kSpace, b);
  const std::string_view token = rest->substr(b, e == std::string_view::npos ? e : e - b);
  *rest = e == std::string_view::npos ? std::string_view() : rest->substr(e);
  return token;
}

// Holds an exclusive flock on `<path>.lock` while alive, so two editors never interleave their
// read-modify-write (the file itself is replaced by rename, so it cannot carry the lock).
class EditLock {
 public:
  static Result<EditLock> Take(const std::string& path) {
    const std::string lock_path = path + ".lock";
    const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return Status(errno == EACCES ? StatusCode::kPermissionDenied : StatusCode::kDataLoss,
                    StrCat("lock file '", lock_path, "': ", std::strerror(errno)));
    }
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return Internal("flock '", lock_path, "': ", std::strerror(err));
    }
    return EditLock(fd);
  }
  EditLock(EditLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  EditLock& operator=(EditLock&&) = delete;
  ~EditLock() {
    if (fd_ >= 0) ::close(fd_);  // Closing releases the lock.
  }

 private:
  explicit EditLock(int fd) : fd_(fd) {}
  int fd_;
};

// `text` with its 1-based `line` replaced by `replacement`, or removed when that is nullopt.
std::string RewriteLine(std::string_view text, int line,
                        const std::optional<std::string>& replacement) {
  std::string out;
  const std::vector<std::string_view> lines = Lines(text);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (static_cast<int>(i) + 1 != line) {
      out.append(lines[i]);
    } else if (replacement) {
      out.append(*replacement);
    } else {
      continue;
    }
    out.push_back('\n');
  }
  return out;
}

// The file's text, or "" when it does not exist yet.
Result<std::string> ReadIfExists(const std::string& path) {
  Result<std::string> text = fs::ReadFile(path);
  if (!text.ok() && text.status().code() == StatusCode::kNotFound) return std::string();
  return text;
}

}  // namespace

Result<AuthorizedClients> AuthorizedClients::Parse(std::string_view text,
                                                   const std::string& source) {
  AuthorizedClients out;
  const std::vector<std::string_view> lines = Lines(text);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const int number = static_cast<int>(i) + 1;
    std::string_view rest = lines[i];
    const std::string_view name = NextToken(&rest);
    if (name.empty() || name.starts_with('#')) continue;
    const auto where = [&] { return StrCat(source, ":", number, ": "); };
    const std::string_view key_text = NextToken(&rest);
    if (key_text.empty()) {
      return InvalidArgument(where(), "'", name.substr(0, 64),
                             "' has no public key (expected `NAME PUBLIC_KEY`)");
    }
    const std::string_view extra = NextToken(&rest);
    if (!extra.empty() && !extra.starts_with('#')) {
      return InvalidArgument(where(), "unexpected '", extra.substr(0, 64),
                             "' after the key (expected `NAME PUBLIC_KEY [# comment]`)");
    }
    if (!wire::ValidClientName(name)) {
      return InvalidArgument(where(), "client name '", name.substr(0, 64),
                             "' is not 1-64 characters of [A-Za-z0-9._-] (not starting with '.')");
    }
    Result<crypto::CurvePublicKey> key =
        crypto::ParseCurvePublicKey(key_text, StrCat("public key of '", name, "'"));
    if (!key.ok()) return key.status().WithContext(StrCat(source, ":", number));
    if (const auto it = out.by_name_.find(name); it != out.by_name_.end()) {
      return InvalidArgument(where(), "client '", name, "' is enrolled twice (first on line ",
                             out.entries_[it->second].line, ")");
    }
    out.by_name_.emplace(std::string(name), out.entries_.size());
    out.by_key_.emplace(*key, out.entries_.size());
    out.entries_.push_back(AuthorizedClient{std::string(name), *key, number});
  }
  return out;
}

Result<AuthorizedClients> AuthorizedClients::Load(const std::string& path) {
  Result<std::string> text = fs::ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return NotFound("authorized clients file '", path,
                      "' does not exist; enroll a client with `fedlora-coordinator clients add "
                      "NAME PUBLIC_KEY`, which creates it");
    }
    return text.status();
  }
  return Parse(*text, path);
}

const crypto::CurvePublicKey* AuthorizedClients::KeyOf(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second].key;
}

std::vector<std::string> AuthorizedClients::NamesOf(const crypto::CurvePublicKey& key) const {
  std::vector<std::string> names;
  const auto [first, last] = by_key_.equal_range(key);
  for (auto it = first; it != last; ++it) names.push_back(entries_[it->second].name);
  std::sort(names.begin(), names.end());
  return names;
}

int AuthorizedClients::LineOf(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? 0 : entries_[it->second].line;
}

bool AuthorizedClients::Allows(const crypto::CurvePublicKey& key) const {
  return by_key_.contains(key);
}

Status AddAuthorizedClient(const std::string& path, const std::string& name,
                           const crypto::CurvePublicKey& key, bool replace) {
  if (!wire::ValidClientName(name)) {
    return InvalidArgument("client name '", name.substr(0, 64),
                           "' is not 1-64 characters of [A-Za-z0-9._-] (not starting with '.')");
  }
  FEDLORA_ASSIGN_OR_RETURN(EditLock lock, EditLock::Take(path));
  FEDLORA_ASSIGN_OR_RETURN(std::string text, ReadIfExists(path));
  FEDLORA_ASSIGN_OR_RETURN(AuthorizedClients current, AuthorizedClients::Parse(text, path));
  if (current.KeyOf(name) != nullptr) {
    if (!replace) {
      return Status(StatusCode::kAlreadyExists,
                    StrCat("client '", name, "' is already enrolled in ", path,
                           " (--replace gives it a new key)"));
    }
    return fs::WriteFileAtomic(
        path, RewriteLine(text, current.LineOf(name), StrCat(name, " ", key.Z85())));
  }
  if (text.empty()) {
    text = "# fedlora authorized clients: one `NAME PUBLIC_KEY` line per client (Z85 keys from\n"
           "# `fedlora-client keygen`). Edited by `fedlora-coordinator clients add|remove`; a\n"
           "# running coordinator reloads it when it changes or on SIGHUP.\n";
  } else if (!text.ends_with('\n')) {
    text.push_back('\n');
  }
  text += StrCat(name, " ", key.Z85(), "\n");
  return fs::WriteFileAtomic(path, text);
}

Status RemoveAuthorizedClient(const std::string& path, const std::string& name) {
  FEDLORA_ASSIGN_OR_RETURN(EditLock lock, EditLock::Take(path));
  FEDLORA_ASSIGN_OR_RETURN(std::string text, ReadIfExists(path));
  FEDLORA_ASSIGN_OR_RETURN(AuthorizedClients current, AuthorizedClients::Parse(text, path));
  const int line = current.LineOf(name);
  if (line == 0) return NotFound("client '", name, "' is not enrolled in ", path);
  return fs::WriteFileAtomic(path, RewriteLine(text, line, std::nullopt));
}

}  // namespace fedlora::server
