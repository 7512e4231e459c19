// codec.h — Envelope <-> ZeroMQ frames.
//
// The only code that includes the generated Cap'n Proto header (codec.cc). Frame 0 carries the
// Cap'n Proto Envelope; each further frame carries one tensor's raw little-endian bytes, described
// in the envelope by a TensorRef with its name, dtype, shape, frame index, byte length and SHA-256.
//
// Decoding never trusts the peer: the traversal limit is bounded, every ref is checked against its
// frame, and every failure becomes a Status whose detail() is the wire::ErrorCode to answer with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::wire {

struct DecodeLimits {
  // Upper bound on all frames together; also bounds Cap'n Proto's traversal of frame 0.
  std::size_t max_message_bytes = std::size_t{256} << 20;
  std::size_t max_frames = 4096;  // Envelope plus tensor frames.
  // Every TensorRef must carry its frame's SHA-256. False only for messages from an
  // authenticated transport (CURVE, whose Poly1305 MAC already covers every byte of every
  // frame): refs may then leave sha256 empty. A digest that is present is always checked.
  bool require_digests = true;
};

struct EncodeOptions {
  // SHA-256 of every tensor frame in its ref. Senders on a CURVE connection leave it out.
  bool tensor_digests = true;
};

// An encoded message. `tensor_frames` borrow the bytes of the Envelope given to Encode(), which
// must outlive this object and stay unmodified; the transport copies each frame once when sending.
struct EncodedMessage {
  std::vector<std::byte> envelope;
  std::vector<std::span<const std::byte>> tensor_frames;
  // Set for the head of a chunked message (total, chunk size and count; no refs): frames() is
  // then the envelope alone, and the tensor bytes go out as chunks (ChunkPieces, EncodeChunk).
  std::optional<ChunkedHead> chunked;

  std::size_t total_bytes() const;  // Of frames().
  // Frame 0 followed by the tensor frames, as views.
  std::vector<std::span<const std::byte>> frames() const;
};

// Serialises `envelope`. Tensors are emitted in TensorMap (name) order, frames 1..n. Tensors must
// be valid (see Validate in tensor.h); that is a precondition, checked. With `envelope.chunked`
// set (only its chunk_bytes is read) the result is the head of a chunked message.
EncodedMessage Encode(const Envelope& envelope, const EncodeOptions& options = {});

// Chunked transfer (proto/fedlora.capnp, "Chunked transfer"). The frames of chunk `index` of a
// chunked head: views of its tensor frames covering bytes [index * chunk_bytes, + chunk_bytes)
// of the tensors laid end to end (a chunk may span tensors, a tensor several chunks).
std::vector<std::span<const std::byte>> ChunkPieces(const EncodedMessage& head,
                                                    std::uint32_t index);
// Room a Chunk message's envelope needs beyond its data (a few dozen bytes; generously).
inline constexpr std::uint64_t kChunkEnvelopeBytes = 4096;
// transport.chunk_bytes: at least kChunkEnvelopeBytes, and a chunk with its envelope fits in
// max_message_bytes. kInvalidArgument naming both keys otherwise.
Status CheckChunkBytes(std::uint64_t chunk_bytes, std::uint64_t max_message_bytes);

// A Chunk message (header.data empty) whose data frames are `pieces`, borrowed, not copied.
EncodedMessage EncodeChunk(std::uint64_t session_id, std::uint64_t sequence, const Chunk& header,
                           std::span<const std::span<const std::byte>> pieces);

// Parses and validates one received message. The head of a chunked message decodes with its
// body's TensorMap empty and `chunked` listing the tensors its chunks will carry (checked: names,
// dtypes, shapes, sizes, positions 1..n, total and chunk count); a Chunk's data frames decode as
// its `data`. Assembling the chunks is chunk_assembler.h's job.
// On failure the Status code says what to do
// (kDataLoss: corrupted bytes; kInvalidArgument: well-formed but unacceptable;
// kResourceExhausted: over a limit) and detail() holds the wire::ErrorCode for the peer.
Result<Envelope> Decode(std::span<const std::span<const std::byte>> frames,
                        const DecodeLimits& limits);

// The wire::ErrorCode carried by a Decode failure, kInternal if none was set.
ErrorCode DecodeErrorCode(const Status& status);

// Header fields of frame 0, read without validating the body or touching tensor frames: so the
// receiver of a message that fails to decode can still quote its sequence number, and so a
// receiver can refuse a stranger's non-Hello message before hashing its tensors. nullopt if even
// the header is unreadable.
struct EnvelopeHeader {
  std::uint16_t protocol_version = 0;
  std::uint64_t session_id = 0;
  std::uint64_t sequence = 0;
  bool is_hello = false;  // The union holds a Hello (lets a receiver refuse strangers cheaply).
};
std::optional<EnvelopeHeader> PeekHeader(std::span<const std::byte> frame0,
                                         const DecodeLimits& limits);

// Encodes `envelope` but stores `raw_kind` as the union discriminant, imitating a peer built from
// a newer schema. For tests of kUnknownMessageKind only.
EncodedMessage EncodeWithUnknownKindForTesting(const Envelope& envelope, std::uint16_t raw_kind);

}  // namespace fedlora::wire
