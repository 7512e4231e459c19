#include "common/wire/chunk_assembler.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "common/crypto/sha256.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace fedlora::wire {
namespace {

Status ChunkError(ErrorCode code, std::string message) {
  return Status(StatusCode::kDataLoss, std::move(message), static_cast<std::uint32_t>(code));
}

}  // namespace

struct ChunkAssembler::Impl {
  // One tensor of the transfer: bytes [begin, begin + length) of the stream.
  struct Part {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0;
    std::uint64_t length = 0;
    std::vector<std::byte> sha256;  // Empty: not checked (an authenticated transport).
    std::optional<crypto::Sha256Hasher> hasher;
    Tensor* tensor = nullptr;  // In memory: where its bytes go.
  };

  Envelope envelope;  // The head; in memory, its body's tensors fill up as chunks arrive.
  std::vector<Part> parts;
  std::uint64_t total = 0;
  std::uint64_t chunk_bytes = 0;
  std::uint32_t chunk_count = 0;
  std::uint32_t next_index = 0;
  std::uint64_t received = 0;
  Status failed;           // Set once; the transfer is void afterwards.
  std::string spool_path;  // Empty: in memory.
  UniqueFd spool;

  ~Impl() { RemoveSpool(); }

  void RemoveSpool() {
    if (spool_path.empty()) return;
    spool = UniqueFd();
    ::unlink(spool_path.c_str());
    spool_path.clear();
  }

  // The part holding byte `offset` (offset < total).
  const Part& PartAt(std::uint64_t offset) const {
    auto it = std::upper_bound(parts.begin(), parts.end(), offset,
                               [](std::uint64_t o, const Part& p) { return o < p.begin; });
    return *(it - 1);
  }

  std::string Describe(std::uint64_t offset) const {
    if (offset >= total) return StrCat("the end (byte ", total, ")");
    const Part& p = PartAt(offset);
    return StrCat("tensor '", p.name, "' at byte ", offset - p.begin, " of ", p.length);
  }

  std::uint64_t ChunkLength(std::uint32_t index) const {
    const std::uint64_t begin = std::uint64_t{index} * chunk_bytes;
    return std::min(chunk_bytes, total - begin);
  }

  Status Write(std::uint64_t offset, std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
      const ssize_t n =
          ::pwrite(spool.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fs::ErrnoStatus(n < 0 ? errno : EIO, "writing chunk spool", spool_path);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
    return OkStatus();
  }

  Status Read(std::uint64_t offset, std::span<std::byte> out) {
    while (!out.empty()) {
      const ssize_t n = ::pread(spool.get(), out.data(), out.size(), static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fs::ErrnoStatus(n < 0 ? errno : EIO, "reading chunk spool", spool_path);
      out = out.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
    return OkStatus();
  }

  Status Accept(const Chunk& chunk) {
    if (!failed.ok()) {
      return ChunkError(ErrorCode::kChunkMismatch, StrCat("transfer ", envelope.sequence,
                                                          " failed already: ", failed.message()));
    }
    Status s = Take(chunk);
    if (!s.ok()) failed = s;
    return s;
  }

  Status Take(const Chunk& chunk) {
    const std::uint64_t transfer = envelope.sequence;
    if (chunk.transfer != transfer) {
      return ChunkError(ErrorCode::kChunkMismatch,
                        StrCat("chunk ", chunk.index, " of transfer ", chunk.transfer,
                               " arrived while transfer ", transfer, " is open"));
    }
    if (next_index >= chunk_count) {
      return ChunkError(ErrorCode::kChunkMismatch,
                        StrCat("transfer ", transfer, ": chunk ", chunk.index, " after all ",
                               chunk_count, " chunks arrived"));
    }
    const std::uint64_t expected_offset = std::uint64_t{next_index} * chunk_bytes;
    if (chunk.index != next_index) {
      const std::uint64_t got = std::uint64_t{chunk.index} * chunk_bytes;
      return ChunkError(
          ErrorCode::kChunkMismatch,
          StrCat("transfer ", transfer, ": chunk ", chunk.index, " (", Describe(got),
                 ") arrived where chunk ", next_index, " (", Describe(expected_offset),
                 ") was expected: a chunk was lost or reordered"));
    }
    if (chunk.offset != expected_offset) {
      return ChunkError(ErrorCode::kChunkMismatch,
                        StrCat("transfer ", transfer, ": chunk ", chunk.index, " claims offset ",
                               chunk.offset, " (", Describe(chunk.offset), "), but it starts at ",
                               expected_offset, " (", Describe(expected_offset), ")"));
    }
    if (chunk.data.size() != ChunkLength(chunk.index)) {
      return ChunkError(ErrorCode::kChunkMismatch,
                        StrCat("transfer ", transfer, ": chunk ", chunk.index, " holds ",
                               chunk.data.size(), " bytes, expected ", ChunkLength(chunk.index),
                               " from ", Describe(expected_offset)));
    }
    if (!spool_path.empty()) FEDLORA_RETURN_IF_ERROR(Write(expected_offset, chunk.data));
    // Walk the tensors the chunk covers: copy (in memory), hash, and check each finished one.
    std::uint64_t at = expected_offset;
    const std::uint64_t end = at + chunk.data.size();
    while (at < end) {
      Part& p = const_cast<Part&>(PartAt(at));
      const std::uint64_t upto = std::min(end, p.begin + p.length);
      const std::span<const std::byte> piece(chunk.data.data() + (at - expected_offset),
                                             static_cast<std::size_t>(upto - at));
      if (p.tensor != nullptr) {
        std::memcpy(p.tensor->data.data() + (at - p.begin), piece.data(), piece.size());
      }
      if (p.hasher) p.hasher->Update(piece);
      if (upto == p.begin + p.length && p.hasher) {
        const crypto::Digest actual = p.hasher->Finish();
        p.hasher.reset();
        if (std::memcmp(actual.data(), p.sha256.data(), actual.size()) != 0) {
          return ChunkError(ErrorCode::kDigestMismatch,
                            StrCat("transfer ", transfer, ": tensor '", p.name, "' (bytes ",
                                   p.begin, "..", p.begin + p.length,
                                   " of the transfer) does not match its SHA-256 "
                                   "(corrupted in transit?)"));
        }
      }
      at = upto;
    }
    received = end;
    ++next_index;
    return OkStatus();
  }
};

Result<ChunkAssembler> ChunkAssembler::InMemory(Envelope head) {
  return Spooled(std::move(head), std::string());
}

Result<ChunkAssembler> ChunkAssembler::Spooled(Envelope head, std::string spool_path) {
  if (!head.chunked || TensorsOf(head.body) == nullptr) {
    return InvalidArgument("ChunkAssembler: the envelope is not the head of a chunked message");
  }
  auto impl = std::make_unique<Impl>();
  const ChunkedHead& h = *head.chunked;
  impl->total = h.total_bytes;
  impl->chunk_bytes = h.chunk_bytes;
  impl->chunk_count = h.chunk_count;
  TensorMap* tensors = TensorsOf(head.body);
  std::uint64_t at = 0;
  for (const TensorRef& ref : h.tensors) {
    Impl::Part p;
    p.name = ref.name;
    p.dtype = ref.dtype;
    p.shape = ref.shape;
    p.begin = at;
    p.length = ref.byte_length;
    p.sha256 = ref.sha256;
    if (!p.sha256.empty()) p.hasher.emplace();
    at += ref.byte_length;
    if (spool_path.empty()) {
      Tensor t{ref.dtype, ref.shape, std::vector<std::byte>(ref.byte_length)};
      p.tensor = &tensors->insert_or_assign(ref.name, std::move(t)).first->second;
    }
    impl->parts.push_back(std::move(p));
  }
  impl->envelope = std::move(head);
  if (!spool_path.empty()) {
    impl->spool = UniqueFd(::open(spool_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (impl->spool.get() < 0) {
      return fs::ErrnoStatus(errno, "creating chunk spool", spool_path);
    }
    impl->spool_path = std::move(spool_path);
  }
  return ChunkAssembler(std::move(impl));
}

ChunkAssembler::ChunkAssembler(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkAssembler::ChunkAssembler(ChunkAssembler&&) noexcept = default;
ChunkAssembler& ChunkAssembler::operator=(ChunkAssembler&&) noexcept = default;
ChunkAssembler::~ChunkAssembler() = default;

std::uint64_t ChunkAssembler::transfer() const { return impl_->envelope.sequence; }
const Envelope& ChunkAssembler::head() const { return impl_->envelope; }
std::uint64_t ChunkAssembler::total_bytes() const { return impl_->total; }
std::uint64_t ChunkAssembler::received_bytes() const { return impl_->received; }
bool ChunkAssembler::complete() const {
  return impl_->failed.ok() && impl_->next_index == impl_->chunk_count;
}
Status ChunkAssembler::Accept(const Chunk& chunk) { return impl_->Accept(chunk); }
std::string ChunkAssembler::Describe(std::uint64_t offset) const { return impl_->Describe(offset); }

Result<Envelope> ChunkAssembler::Finish() {
  if (!complete()) {
    impl_->RemoveSpool();
    return ChunkError(
        ErrorCode::kChunkMismatch,
        StrCat("transfer ", transfer(), " is incomplete: ", impl_->received, " of ", impl_->total,
               " bytes arrived (next: ", impl_->Describe(impl_->received), ")"));
  }
  Envelope out = std::move(impl_->envelope);
  out.chunked.reset();
  if (!impl_->spool_path.empty()) {
    TensorMap* tensors = TensorsOf(out.body);
    Status s;
    for (const Impl::Part& p : impl_->parts) {
      Tensor t{p.dtype, p.shape, std::vector<std::byte>(p.length)};
      s = impl_->Read(p.begin, t.data);
      if (!s.ok()) break;
      tensors->insert_or_assign(p.name, std::move(t));
    }
    impl_->RemoveSpool();
    if (!s.ok()) return s;
  }
  return out;
}

}  // namespace fedlora::wire
