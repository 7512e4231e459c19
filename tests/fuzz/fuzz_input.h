// fuzz_input.h — how a fuzz target cuts one libFuzzer input into several byte strings, and where
// the targets that need files write them.
//
// Several targets take more than one input: the wire codec a multi-frame message, PEFT import two
// files, the tokenizer a tokenizer.json plus its tokenizer_config.json. They all use one layout,
// so the seed generator (make_seeds.cc) and the targets agree on it:
//
//   part := uint32 little-endian length n, then n bytes
//   input := part part ...        (a length past the end takes what is left; parts beyond
//                                  `max_parts` are ignored)
//
// Plain length prefixes rather than separators: any byte string can be a part (tensor frames are
// binary), and a mutation that changes one length moves bytes between neighbouring parts, which is
// exactly the "frame split in the wrong place" case a decoder must survive.
//
// Header-only (common/status.h aside): included by every target, built by g++ (the replay tests)
// and clang (libFuzzer builds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "common/status.h"

namespace fedlora::fuzz {

// The parts of `input` (views into it), at most `max_parts` of them.
inline std::vector<std::span<const std::byte>> SplitParts(std::span<const std::byte> input,
                                                          std::size_t max_parts) {
  std::vector<std::span<const std::byte>> parts;
  std::size_t pos = 0;
  while (pos + 4 <= input.size() && parts.size() < max_parts) {
    std::uint32_t n = 0;
    for (int i = 3; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint32_t>(input[pos + i]);
    pos += 4;
    const std::size_t take = std::min<std::size_t>(n, input.size() - pos);
    parts.push_back(input.subspan(pos, take));
    pos += take;
  }
  return parts;
}

// The inverse of SplitParts, for the seed generator.
inline std::vector<std::byte> JoinParts(const std::vector<std::vector<std::byte>>& parts) {
  std::vector<std::byte> out;
  for (const std::vector<std::byte>& p : parts) {
    const auto n = static_cast<std::uint32_t>(p.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

inline std::string_view AsText(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

inline std::vector<std::byte> AsBytes(std::string_view text) {
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  return {p, p + text.size()};
}

// A directory private to this process for targets whose code under test reads files (PEFT
// import, llama2.c checkpoints): created under $TMPDIR (or /tmp) on first use, removed when the
// process exits normally. A crashing run leaves it behind, named fedlora-fuzz.<pid>.*.
class ScratchDir {
 public:
  static const std::filesystem::path& Get() {
    static ScratchDir dir;
    return dir.path_;
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

 private:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/fedlora-fuzz." + std::to_string(::getpid()) + ".XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("fuzz: mkdtemp");
      std::abort();  // Not a finding: the harness cannot run at all.
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path path_;
};

// Writes `bytes` to `path` (replacing it); aborts if it cannot, as the harness is then broken.
inline void WriteScratchFile(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) ||
      std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
}

// FEDLORA_FUZZ_VERBOSE=1 makes the targets print each input's verdict ("ok" or the Status) to
// stderr: for checking by hand that seeds reach what they were written for. Off by default
// (and never set by scripts/fuzz.sh: printing would dominate the executions).
inline bool Verbose() {
  static const bool verbose = [] {
    const char* v = std::getenv("FEDLORA_FUZZ_VERBOSE");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return verbose;
}

inline void Report(const char* what, const Status& status) {
  if (Verbose()) std::fprintf(stderr, "  %s: %s\n", what, status.ToString().c_str());
}
template <typename T>
void Report(const char* what, const Result<T>& result) {
  if (Verbose()) Report(what, result.status());
}

// Aborts with `what` when a property the target checks does not hold: a finding, like a crash.
inline void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace fedlora::fuzz
