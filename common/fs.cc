#include "common/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/unique_fd.h"

namespace fedlora::fs {
namespace {

Status Errno(std::string_view what, const std::string& path) { return ErrnoStatus(errno, what, path); }

using Fd = UniqueFd;

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

Status ErrnoStatus(int err, std::string_view what, const std::string& path) {
  StatusCode code = StatusCode::kDataLoss;
  switch (err) {
    case ENOENT: code = StatusCode::kNotFound; break;
    case EACCES:
    case EPERM: code = StatusCode::kPermissionDenied; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOMEM: code = StatusCode::kResourceExhausted; break;
    default: break;
  }
  return Status(code, StrCat(what, " '", path, "': ", std::strerror(err)));
}

Result<std::string> ReadFile(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Errno("open", path);
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
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
  const bool created = ::access(path.c_str(), F_OK) != 0;
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Errno("open for append", path);
  if (created) FEDLORA_RETURN_IF_ERROR(FsyncDirectory(ParentOf(path)));
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
  const std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) return OkStatus();
  const std::filesystem::path parent = p.parent_path();
  if (!parent.empty() && parent != p) FEDLORA_RETURN_IF_ERROR(MakeDirectories(parent.string()));
  if (!std::filesystem::create_directory(p, ec) && ec) {
    return Status(StatusCode::kDataLoss, StrCat("mkdir '", path, "': ", ec.message()));
  }
  return FsyncDirectory(parent.empty() ? "." : parent.string());
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
