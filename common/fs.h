// fs.h — durable file operations: whole-file reads, atomic writes, atomic directory commits.
//
// "Atomic" means a reader (or a process restarted after a crash or power loss) sees either the
// old state or the complete new one: data is written to a temporary name, fsynced, renamed, and
// the parent directory is fsynced. Errors name the path at fault.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fedlora::fs {

// The Status for a failed system call on `path`, from `err` (errno, read right after the call):
// "<what> '<path>': <strerror>" with a code chosen by what the caller can do next: kNotFound
// (ENOENT), kPermissionDenied (EACCES, EPERM), kAlreadyExists (EEXIST), kResourceExhausted (out
// of space, descriptors or memory), kDataLoss for any other I/O error. The one errno-to-status map
// of the tree: file code in common/ and elsewhere uses it rather than a private copy.
Status ErrnoStatus(int err, std::string_view what, const std::string& path);

// kNotFound if missing, kPermissionDenied, kResourceExhausted (e.g. out of file descriptors),
// kDataLoss on I/O errors. The code reflects the cause, so callers can tell a missing or
// corrupt file from an environment problem.
Result<std::string> ReadFile(const std::string& path);

// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename, fsync dir).
Status WriteFileAtomic(const std::string& path, std::span<const std::byte> bytes);
Status WriteFileAtomic(const std::string& path, std::string_view text);

// Writes `bytes` to a new file at `path` and fsyncs it (no rename; for files inside a staging
// directory that is itself committed atomically).
Status WriteFileSynced(const std::string& path, std::span<const std::byte> bytes);
Status WriteFileSynced(const std::string& path, std::string_view text);

// Appends one line (a trailing '\n' is added) and fsyncs, creating the file if needed.
Status AppendLineSynced(const std::string& path, std::string_view line);

Status FsyncDirectory(const std::string& path);
// Creates `path` and any missing parents, fsyncing the parent of each directory it creates so
// the new entries survive a power loss.
Status MakeDirectories(const std::string& path);

// Renames directory `staging` to `final_path` (which must not exist) and fsyncs the parent.
Status CommitDirectory(const std::string& staging, const std::string& final_path);

// Removes `path` recursively if it exists.
Status RemoveAll(const std::string& path);

}  // namespace fedlora::fs
