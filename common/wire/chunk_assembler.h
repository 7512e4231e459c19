// chunk_assembler.h — puts a chunked message back together as its chunks arrive.
//
// A message larger than the sender's transport.chunk_bytes travels as a head (the Envelope with
// its tensor refs) and chunks of its tensors' bytes laid end to end (proto/fedlora.capnp,
// "Chunked transfer"). The receiver opens a ChunkAssembler with the decoded head and gives it
// every Chunk of that transfer. Each chunk must be the next one, at the next offset, with the
// expected length; a tensor's SHA-256 (when its ref has one) is checked as soon as its last byte
// arrived. Any failure names the tensor and the byte offset at fault, and the transfer is void
// (the sender sends the whole message again): nothing of it is ever handed on.
//
// Two places for the bytes: in memory (the receiver needs the tensors anyway: a client's task),
// or spooled to a file (the coordinator: an open upload then costs disk, not memory, and only
// the one upload being checked and folded is ever read back whole).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::wire {

class ChunkAssembler {
 public:
  // `head`: a decoded head (envelope.chunked set, body tensors empty). The tensors are
  // allocated now and chunks are copied into place.
  static Result<ChunkAssembler> InMemory(Envelope head);
  // Chunks are written to `spool_path` (created, must not exist; removed when the assembler is
  // destroyed or finished) and read back by Finish. kResourceExhausted and the like, naming the
  // path, when it cannot be created.
  static Result<ChunkAssembler> Spooled(Envelope head, std::string spool_path);

  ChunkAssembler(ChunkAssembler&&) noexcept;
  ChunkAssembler& operator=(ChunkAssembler&&) noexcept;
  ~ChunkAssembler();

  std::uint64_t transfer() const;  // The head's sequence number.
  const Envelope& head() const;    // The head as decoded (tensors still empty).
  std::uint64_t total_bytes() const;
  std::uint64_t received_bytes() const;
  bool complete() const;

  // Takes the next chunk. kDataLoss with detail kChunkMismatch (a chunk of another transfer,
  // out of order, at the wrong offset or of the wrong length) or kDigestMismatch (a tensor whose
  // bytes do not hash to its ref), naming the tensor and offset; kDataLoss / kResourceExhausted
  // when the spool cannot be written. After any error the transfer is void: Accept refuses
  // everything and Finish fails.
  Status Accept(const Chunk& chunk);

  // The whole message, its tensors filled in (requires complete()). The spool file is gone
  // afterwards, whatever the outcome.
  Result<Envelope> Finish();

  // Where byte `offset` of the transfer lies: "tensor 'NAME' at byte K of N", or "the end".
  std::string Describe(std::uint64_t offset) const;

 private:
  struct Impl;
  explicit ChunkAssembler(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::wire
