// wire_decode_fuzz.cc — fuzzes the wire envelope and every message decoder, tensor frames
// included (common/wire/codec.h).
//
// Input: one flags byte, then the message's frames in fuzz_input.h's length-prefixed layout
// (frame 0 is the Cap'n Proto envelope, the rest tensor frames). Flags: bit 0 set = the receiver
// requires per-frame SHA-256 digests (plaintext transport), clear = digests optional (CURVE);
// bit 1 set = tight limits (4 KiB, 4 frames), so the limit checks are reached too.
//
// Checks, beyond "no crash, no sanitizer report": PeekHeader and Decode agree on the header of a
// message that decodes; a decoded message re-encodes (Encode's preconditions hold for anything
// Decode accepts) and decodes again to the same bytes; every failure carries a wire::ErrorCode.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <variant>
#include <vector>

#include "common/wire/codec.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

using namespace fedlora;

bool SameBytes(const wire::EncodedMessage& a, const wire::EncodedMessage& b) {
  const auto fa = a.frames(), fb = b.frames();
  if (fa.size() != fb.size()) return false;
  for (std::size_t i = 0; i < fa.size(); ++i) {
    if (!std::equal(fa[i].begin(), fa[i].end(), fb[i].begin(), fb[i].end())) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const std::uint8_t flags = data[0];
  wire::DecodeLimits limits;
  limits.require_digests = (flags & 1) != 0;
  if ((flags & 2) != 0) {
    limits.max_message_bytes = 4096;
    limits.max_frames = 4;
  }
  const std::vector<std::span<const std::byte>> frames = fuzz::SplitParts(input.subspan(1), 64);

  const std::optional<wire::EnvelopeHeader> header =
      frames.empty() ? std::nullopt : wire::PeekHeader(frames[0], limits);
  Result<wire::Envelope> decoded = wire::Decode(frames, limits);
  fuzz::Report("Decode", decoded);
  if (!decoded.ok()) {
    fuzz::Require(wire::DecodeErrorCode(decoded.status()) != wire::ErrorCode::kInternal,
                  "a Decode failure carries a wire::ErrorCode");
    return 0;
  }
  const wire::Envelope& envelope = decoded.value();
  fuzz::Require(header.has_value(), "PeekHeader reads the header of a message Decode accepts");
  fuzz::Require(header->session_id == envelope.session_id && header->sequence == envelope.sequence &&
                    header->protocol_version == envelope.protocol_version &&
                    header->is_hello == std::holds_alternative<wire::Hello>(envelope.body),
                "PeekHeader and Decode agree");
  (void)wire::BodyName(envelope.body);

  // Round trip: what we accept, we can send, and it reads back the same.
  const wire::EncodeOptions options{.tensor_digests = limits.require_digests};
  const wire::EncodedMessage once = wire::Encode(envelope, options);
  wire::DecodeLimits relaxed;  // Our own encoding may be larger than a tight limit allowed.
  relaxed.require_digests = limits.require_digests;
  Result<wire::Envelope> again = wire::Decode(once.frames(), relaxed);
  fuzz::Require(again.ok(), "a re-encoded message decodes");
  const wire::EncodedMessage twice = wire::Encode(again.value(), options);
  fuzz::Require(SameBytes(once, twice), "encode(decode(encode(m))) == encode(m)");
  return 0;
}
