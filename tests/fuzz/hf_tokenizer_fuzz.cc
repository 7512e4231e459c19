// hf_tokenizer_fuzz.cc — fuzzes Hugging Face tokenizer.json loading (client/model/hf_tokenizer.h
// HfTokenizer::Parse) and, when it loads, encoding and decoding with it.
//
// Input (fuzz_input.h layout): tokenizer.json, then tokenizer_config.json (absent = none), then
// a text of at most 256 bytes to encode (absent = a fixed sentence with spaces, digits, accents
// and an emoji). Its bytes, read as little-endian int32 ids, are also decoded, so ids outside the
// vocabulary are exercised.
//
// Checks: no crash, no sanitizer report, no exception escaping (nlohmann/json, PCRE2 and
// utf8proc are behind hf_tokenizer.cc); encoding ids are inside [0, vocab_size).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "client/model/hf_tokenizer.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const std::vector<std::span<const std::byte>> parts = fuzz::SplitParts(input, 3);
  if (parts.empty()) return 0;
  const std::string_view config = parts.size() > 1 ? fuzz::AsText(parts[1]) : std::string_view();
  Result<std::unique_ptr<client::HfTokenizer>> tokenizer = client::HfTokenizer::Parse(
      fuzz::AsText(parts[0]), "tokenizer.json", config, "tokenizer_config.json");
  fuzz::Report("HfTokenizer::Parse", tokenizer);
  if (!tokenizer.ok()) return 0;
  const client::HfTokenizer& t = *tokenizer.value();

  std::string_view text = "Hello world, 12345 caf\xc3\xa9 \xf0\x9f\x98\x80  tabs\tand\nlines";
  if (parts.size() > 2) text = fuzz::AsText(parts[2]).substr(0, 256);
  const std::int32_t vocab = t.vocab_size();
  for (const bool special : {false, true}) {
    const std::vector<client::TokenId> ids = t.Encode(text, special, special);
    for (client::TokenId id : ids) {
      fuzz::Require(id >= 0 && id < vocab, "encoded ids are inside the vocabulary");
      (void)t.IdToPiece(id);
    }
    (void)t.Decode(ids);
  }
  std::vector<client::TokenId> raw(text.size() / sizeof(client::TokenId));
  if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * sizeof(client::TokenId));
  (void)t.Decode(raw);
  for (client::TokenId id : raw) (void)t.IsSpecial(id);
  (void)t.bos_id();
  (void)t.eos_id();
  (void)t.Describe();
  return 0;
}
