// llama2c_tokenizer_fuzz.cc — fuzzes the llama2.c tokenizer.bin reader
// (client/model/tokenizer.h Tokenizer::Load / Parse) and encoding and decoding with the result.
//
// Input: 4 bytes little-endian int32 vocab_size (the value the model's header would give), then
// the tokenizer file. Tokenizer::Load is ReadTokenizerFile + Parse, so this calls Parse on the
// bytes directly (no file per execution); the file-reading half is ordinary stdio.
//
// Checks: no crash, no sanitizer report, no allocation beyond the input's size (a vocab_size the
// file cannot hold must not reserve memory first); a tokenizer that loads encodes to ids inside
// the vocabulary and Decode(Encode(s)) == s when the vocabulary has the piece " " (see below).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "client/model/tokenizer.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  if (size < 4) return 0;
  std::int32_t vocab_size;
  std::memcpy(&vocab_size, data, sizeof vocab_size);
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data) + 4, size - 4);
  Result<client::Tokenizer> tokenizer = client::Tokenizer::Parse(file, vocab_size, "tokenizer.bin");
  fuzz::Report("Tokenizer::Parse", tokenizer);
  if (!tokenizer.ok()) return 0;
  const client::Tokenizer& t = tokenizer.value();
  fuzz::Require(t.vocab_size() == vocab_size, "a loaded tokenizer has the vocab_size asked for");

  // The text: the file's last bytes (arbitrary, often not UTF-8) and a fixed sentence.
  const std::string_view tail(reinterpret_cast<const char*>(file.data()) + file.size() -
                                  std::min<std::size_t>(file.size(), 64),
                              std::min<std::size_t>(file.size(), 64));
  for (const std::string_view text : {tail, std::string_view("Once upon a time, caf\xc3\xa9.")}) {
    const std::vector<client::TokenId> ids = t.Encode(text, true, true);
    for (client::TokenId id : ids) {
      fuzz::Require(id >= 0 && id < t.vocab_size(), "encoded ids are inside the vocabulary");
    }
    // tokenizer.h promises the round trip; it holds when the vocabulary has the dummy-prefix
    // piece " ". Without it Encode falls back to the byte token <0x20>, which Decode (like
    // run.c) does not strip after BOS, so the text comes back with a leading space (found by
    // fuzzing: corpus/llama2c_tokenizer/crash-no-space-piece-roundtrip; see
    // docs/reliability.md).
    if (t.PieceToId(" ") >= 0) fuzz::Require(t.Decode(ids) == text, "Decode(Encode(s)) == s");
  }
  return 0;
}
