// tokenizer.h — the llama2.c tokenizer (SentencePiece BPE with byte fallback), torch-free.
//
// Reads the `.bin` files written by llama2.c's tokenizer.py and encodes/decodes exactly like
// llama2.c's run.c, so token ids match what the checkpoints were trained on. The one difference
// is speed: run.c rescans every adjacent pair after each merge (O(n²)); Encode keeps the symbols
// in a linked list and the candidate merges in a priority queue with lazy invalidation
// (O(n log n)), which takes the 1.1 MB tinyshakespeare corpus from minutes to well under a second.
// The merge order is identical: highest score first, leftmost pair on ties.
//
// Knows nothing about models or tensors; the vocabulary size comes from the model's header
// because the file does not store it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

// File layout (little-endian): int32 max_token_length, then `vocab_size` records of
// {float32 score, int32 len, len bytes piece}. Ids 0..2 are <unk>, BOS and EOS; ids 3..258 are the
// byte-fallback pieces "<0x00>".."<0xFF>" (id = byte + 3).
//
// Immutable after loading: every const method is safe to call from any number of threads.
class Tokenizer final : public TextTokenizer {
 public:
  static constexpr TokenId kUnk = 0;
  static constexpr TokenId kBos = 1;
  static constexpr TokenId kEos = 2;
  static constexpr TokenId kFirstByteToken = 3;  // Piece "<0x00>"; byte b is id b + 3.

  // Reads a llama2.c tokenizer file holding exactly `vocab_size` pieces (take it from the model).
  // kNotFound: the file cannot be opened. kDataLoss: the file ends inside a record.
  // kInvalidArgument: `vocab_size` < 259, or the content is impossible (negative or over-long
  // piece, non-finite score, missing byte-fallback pieces, bytes left over after the last piece,
  // which usually means the tokenizer belongs to another model). Every message names `path`.
  static Result<Tokenizer> Load(const std::string& path, std::int32_t vocab_size);

  // Same as Load, from bytes already in memory; `source` names them in error messages.
  static Result<Tokenizer> Parse(std::span<const std::byte> bytes, std::int32_t vocab_size,
                                 std::string_view source);

  // Encodes like run.c's encode(): optional BOS; the dummy-prefix piece " " when `text` is not
  // empty (its byte token <0x20> if the vocabulary has no " ", where run.c would emit -1); each UTF-8 code point (a lead byte plus up to 3 continuation bytes, as run.c groups
  // them) as its piece, or one byte token per byte when it has none; then repeated merges of the
  // adjacent pair whose concatenation is a piece with the highest score (leftmost on ties; BOS
  // takes part in pairs exactly as in run.c); optional EOS.
  // Unlike run.c (which reads a C string) a NUL byte does not end the text: it becomes <0x00>.
  std::vector<TokenId> Encode(std::string_view text, bool bos, bool eos) const override;

  // The text of `token` as run.c's decode() prints it after `prev` (-1 = none): the piece, minus
  // its leading space when `prev` is BOS, and the raw byte for a byte-fallback piece.
  // Requires 0 <= token < vocab_size() (checked; ids come from this tokenizer or the model).
  std::string_view DecodePiece(TokenId prev, TokenId token) const;

  // Concatenated DecodePiece of a sequence. BOS and EOS are control tokens and produce no text,
  // so Decode(Encode(s, true, true)) == s when the vocabulary has the piece " " (every real
  // llama2.c tokenizer does); without it the dummy prefix is the byte token <0x20>, which decodes
  // as a leading space, as in run.c.
  std::string Decode(std::span<const TokenId> tokens) const override;

  std::int32_t vocab_size() const override { return static_cast<std::int32_t>(pieces_.size()); }
  TokenId bos_id() const override { return kBos; }
  TokenId eos_id() const override { return kEos; }
  TokenId PieceToId(std::string_view piece) const override { return Lookup(piece); }
  std::string Describe() const override;
  std::int32_t max_token_length() const { return max_token_length_; }
  const std::string& piece(TokenId id) const;  // Requires a valid id (checked).
  float score(TokenId id) const;               // Requires a valid id (checked).
  // The id whose piece is exactly `piece`, or -1. Duplicate pieces resolve to the lowest id.
  TokenId Lookup(std::string_view piece) const;

 private:
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  Tokenizer() = default;
  bool IsByteToken(TokenId id) const {
    return id >= kFirstByteToken && id < kFirstByteToken + 256;
  }

  std::int32_t max_token_length_ = 0;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<std::string> decoded_;  // Piece as printed: the raw byte for byte tokens.
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> ids_;
  TokenId dummy_prefix_ = -1;         // Id of the piece " ", or -1 if the vocabulary lacks it.
};

}  // namespace fedlora::client
