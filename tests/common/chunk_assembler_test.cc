// Chunked transfer below the sockets: a head and its chunks, cut by ChunkPieces and encoded as
// the wire carries them, put back together by ChunkAssembler in memory or through a spool file.
#include "common/wire/chunk_assembler.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "common/wire/codec.h"

namespace fedlora::wire {
namespace {

std::vector<float> Ramp(std::size_t n, float start) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Three tensors of 40, 12 and 100 bytes: 152 bytes, so 64-byte chunks number 3 and the first
// spans "a" and "b".
Update SampleUpdate() {
  Update u;
  u.round = 3;
  u.num_samples = 8;
  u.num_examples = 20;
  u.metrics = {{"train_loss", 1.5}};
  u.tensors["a"] = MakeF32({2, 5}, Ramp(10, 1));
  u.tensors["b"] = MakeF32({3}, Ramp(3, 100));
  u.tensors["c"] = MakeF32({5, 5}, Ramp(25, -7));
  return u;
}

struct Wire {
  Envelope head;
  std::vector<Chunk> chunks;
};

// Encodes `update` as a chunked message and decodes every piece as a receiver would.
Wire Transmit(const Update& update, std::uint64_t chunk_bytes, bool digests = true) {
  const Envelope env{kProtocolVersion, 9, 41, update, ChunkedHead{.chunk_bytes = chunk_bytes}};
  const EncodedMessage head = Encode(env, {.tensor_digests = digests});
  DecodeLimits limits;
  limits.require_digests = digests;
  Wire out;
  out.head = Decode(head.frames(), limits).value();
  for (std::uint32_t i = 0; i < head.chunked->chunk_count; ++i) {
    const EncodedMessage chunk =
        EncodeChunk(9, 42 + i, Chunk{41, i, i * chunk_bytes, {}}, ChunkPieces(head, i));
    Envelope decoded = Decode(chunk.frames(), limits).value();
    out.chunks.push_back(std::get<Chunk>(std::move(decoded.body)));
  }
  return out;
}

TEST(ChunkAssemblerTest, TheHeadDecodesWithItsTensorRefsAndNoTensors) {
  const Wire w = Transmit(SampleUpdate(), 64);
  ASSERT_TRUE(w.head.chunked.has_value());
  EXPECT_EQ(w.head.chunked->total_bytes, 152u);
  EXPECT_EQ(w.head.chunked->chunk_count, 3u);
  ASSERT_EQ(w.head.chunked->tensors.size(), 3u);
  EXPECT_EQ(w.head.chunked->tensors[1].name, "b");
  EXPECT_EQ(w.head.chunked->tensors[1].byte_length, 12u);
  EXPECT_TRUE(std::get<Update>(w.head.body).tensors.empty());
  ASSERT_EQ(w.chunks.size(), 3u);
  EXPECT_EQ(w.chunks[0].data.size(), 64u);  // All 40 bytes of "a", 12 of "b", 12 of "c".
  EXPECT_EQ(w.chunks[2].data.size(), 24u);
}

TEST(ChunkAssemblerTest, ChunksPutBackInMemoryGiveTheMessageSent) {
  const Wire w = Transmit(SampleUpdate(), 64);
  ChunkAssembler a = ChunkAssembler::InMemory(w.head).value();
  for (const Chunk& c : w.chunks) {
    EXPECT_FALSE(a.complete());
    ASSERT_TRUE(a.Accept(c).ok());
  }
  ASSERT_TRUE(a.complete());
  const Envelope whole = a.Finish().value();
  EXPECT_FALSE(whole.chunked.has_value());
  EXPECT_EQ(std::get<Update>(whole.body), SampleUpdate());
}

TEST(ChunkAssemblerTest, ASpooledTransferLivesInItsFileUntilFinishedAndLeavesNothingBehind) {
  const std::string spool = ::testing::TempDir() + "/fedlora_chunk_spool.part";
  std::filesystem::remove(spool);
  const Wire w = Transmit(SampleUpdate(), 16, /*digests=*/false);  // CURVE-style: no digests.
  {
    ChunkAssembler a = ChunkAssembler::Spooled(w.head, spool).value();
    EXPECT_TRUE(std::filesystem::exists(spool));
    for (const Chunk& c : w.chunks) ASSERT_TRUE(a.Accept(c).ok());
    EXPECT_EQ(a.received_bytes(), 152u);
    EXPECT_EQ(std::get<Update>(a.Finish().value().body), SampleUpdate());
    EXPECT_FALSE(std::filesystem::exists(spool));
  }
  {
    ChunkAssembler a = ChunkAssembler::Spooled(w.head, spool).value();
    ASSERT_TRUE(a.Accept(w.chunks[0]).ok());
  }  // Abandoned part-way (the client left).
  EXPECT_FALSE(std::filesystem::exists(spool));
}

TEST(ChunkAssemblerTest,
     AChunkOutOfPlaceIsAChunkMismatchNamingTheTensorAndOffsetAndVoidsTheTransfer) {
  const Wire w = Transmit(SampleUpdate(), 64);
  ChunkAssembler a = ChunkAssembler::InMemory(w.head).value();
  ASSERT_TRUE(a.Accept(w.chunks[0]).ok());
  const Status skipped = a.Accept(w.chunks[2]);
  EXPECT_EQ(DecodeErrorCode(skipped), ErrorCode::kChunkMismatch);
  EXPECT_NE(skipped.message().find("chunk 2 (tensor 'c' at byte 76 of 100)"), std::string::npos)
      << skipped.message();
  EXPECT_NE(skipped.message().find("chunk 1 (tensor 'c' at byte 12 of 100) was expected"),
            std::string::npos)
      << skipped.message();
  // Void from now on, even for the chunk that was due.
  EXPECT_EQ(DecodeErrorCode(a.Accept(w.chunks[1])), ErrorCode::kChunkMismatch);
  EXPECT_FALSE(a.complete());
  EXPECT_FALSE(a.Finish().ok());
}

TEST(ChunkAssemblerTest, AWrongTransferOffsetOrLengthIsAChunkMismatch) {
  const Wire w = Transmit(SampleUpdate(), 64);
  Chunk other_transfer = w.chunks[0];
  other_transfer.transfer = 7;
  Chunk wrong_offset = w.chunks[0];
  wrong_offset.offset = 8;
  Chunk short_data = w.chunks[0];
  short_data.data.pop_back();
  for (const Chunk& bad : {other_transfer, wrong_offset, short_data}) {
    ChunkAssembler a = ChunkAssembler::InMemory(w.head).value();
    const Status s = a.Accept(bad);
    EXPECT_EQ(DecodeErrorCode(s), ErrorCode::kChunkMismatch) << s.ToString();
  }
}

TEST(ChunkAssemblerTest, BytesCorruptedInAChunkFailTheDigestOfTheTensorTheyBelongTo) {
  Wire w = Transmit(SampleUpdate(), 64);
  w.chunks[0].data[45] ^= std::byte{1};  // Byte 5 of "b".
  ChunkAssembler a = ChunkAssembler::InMemory(w.head).value();
  const Status s = a.Accept(w.chunks[0]);
  EXPECT_EQ(DecodeErrorCode(s), ErrorCode::kDigestMismatch);
  EXPECT_NE(s.message().find("tensor 'b'"), std::string::npos) << s.message();
}

TEST(ChunkAssemblerTest, AHeadThatCarriesTensorFramesIsRefused) {
  const Envelope env{kProtocolVersion, 9, 41, SampleUpdate(), ChunkedHead{.chunk_bytes = 64}};
  const EncodedMessage head = Encode(env);
  // With the tensor frames attached, a head is not a head.
  std::vector<std::span<const std::byte>> with_frames = {std::span(head.envelope)};
  with_frames.insert(with_frames.end(), head.tensor_frames.begin(), head.tensor_frames.end());
  EXPECT_EQ(DecodeErrorCode(Decode(with_frames, {}).status()), ErrorCode::kFrameCountMismatch);
}

TEST(ChunkAssemblerTest, ChunkBytesMustLeaveRoomForTheEnvelopeBelowTheMessageLimit) {
  EXPECT_TRUE(CheckChunkBytes(8 << 20, 256 << 20).ok());
  EXPECT_FALSE(CheckChunkBytes(100, 256 << 20).ok());
  EXPECT_FALSE(CheckChunkBytes(256 << 20, 256 << 20).ok());
  const Status s = CheckChunkBytes(1 << 20, 1 << 20);
  EXPECT_NE(s.message().find("transport.max_message_bytes"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace fedlora::wire
