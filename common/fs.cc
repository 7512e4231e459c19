#include "common/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fedlora::fs {
namespace {

Status Errno(std::string_view what, const std::string& path) {
  const int err = errno;
  const StatusCode code = err == ENOENT   ? StatusCode::kNotFound
                          : err == ENOSPC ? StatusCode::kResourceExhausted
                          : err == EACCES ? StatusCode::kPermissionDenied
                                          : StatusCode::kDataLoss;
  return Status(code, StrCat(what, " '", path, "': ", std::strerror(err)));
}

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

Status WriteAll(int fd, std::span<const std::byte> bytes, const std::string& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path);
    }
    done += static_cast<std::size_t>(n);
  }
  return OkStatus();
}

std::span<const std::byte> AsBytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string ParentOf(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '", path, "'");
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return DataLoss("error reading '", path, "'");
  return std::move(out).str();
}

Status WriteFileSynced(const std::string& path, std::span<const std::byte> bytes) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Errno("create", path);
  FEDLORA_RETURN_IF_ERROR(WriteAll(fd.get(), bytes, path));
  if (::fsync(fd.get()) != 0) return Errno("fsync", path);
  if (::close(fd.release()) != 0) return Errno("close", path);
  return OkStatus();
}

Status WriteFileSynced(const std::string& path, std::string_view text) {
  return WriteFileSynced(path, AsBytes(text));
}

Status WriteFileAtomic(const std::string& path, std::span<const std::byte> bytes) {
  const std::string tmp = StrCat(path, ".tmp.", ::getpid());
  Status s = WriteFileSynced(tmp, bytes);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = Errno("rename to", path);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return FsyncDirectory(ParentOf(path));
}

Status WriteFileAtomic(const std::string& path, std::string_view text) {
  return WriteFileAtomic(path, AsBytes(text));
}

Status AppendLineSynced(const std::string& path, std::string_view line) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Errno("open for append", path);
  std::string with_newline(line);
  with_newline.push_back('\n');
  FEDLORA_RETURN_IF_ERROR(WriteAll(fd.get(), AsBytes(with_newline), path));
  if (::fsync(fd.get()) != 0) return Errno("fsync", path);
  return OkStatus();
}

Status FsyncDirectory(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Errno("open directory", path);
  if (::fsync(fd.get()) != 0) return Errno("fsync directory", path);
  return OkStatus();
}

Status MakeDirectories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return Status(StatusCode::kDataLoss, StrCat("mkdir '", path, "': ", ec.message()));
  return OkStatus();
}

Status CommitDirectory(const std::string& staging, const std::string& final_path) {
  FEDLORA_RETURN_IF_ERROR(FsyncDirectory(staging));
  if (::rename(staging.c_str(), final_path.c_str()) != 0) return Errno("rename to", final_path);
  return FsyncDirectory(ParentOf(final_path));
}

Status RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return Status(StatusCode::kDataLoss, StrCat("remove '", path, "': ", ec.message()));
  return OkStatus();
}

}  // namespace fedlora::fs
