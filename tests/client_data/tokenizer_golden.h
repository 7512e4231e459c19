// tokenizer_golden.h — reads tests/data/tokenizers/golden.json, the ids and texts the Python
// `tokenizers` and `sentencepiece` libraries produced for the fixture tokenizers
// (scripts/make_tokenizer_fixtures.py), for the golden tests of every TextTokenizer.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/model/text_tokenizer.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client::testing_assets {

struct GoldenCase {
  std::string text;
  std::vector<TokenId> ids;  // Without special tokens.
  std::string decoded;       // Decode of prefix + ids + suffix, special tokens left out.
};

struct GoldenFixture {
  std::string path;  // Absolute path of the tokenizer file.
  std::int32_t vocab_size = 0;
  // The ids add_special_tokens=True (HF) / add_bos=True (SentencePiece) put around every string.
  std::vector<TokenId> prefix;
  std::vector<TokenId> suffix;
  std::size_t corpus_ids = 0;  // Ids of the whole tinyshakespeare corpus, no special tokens.
  std::string corpus_fnv1a64;  // FNV-1a 64 of those ids as int32 little-endian, 16 hex digits.
  std::vector<GoldenCase> cases;
};

inline std::string ReadFileForTest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline GoldenFixture LoadGolden(const std::string& name) {
  static const nlohmann::json golden =
      nlohmann::json::parse(ReadFileForTest(TokenizerFixturePath("golden.json")));
  const nlohmann::json& f = golden.at("fixtures").at(name);
  GoldenFixture out;
  out.path = TokenizerFixturePath(f.at("path").get<std::string>());
  out.vocab_size = f.at("vocab_size").get<std::int32_t>();
  out.prefix = f.at("prefix").get<std::vector<TokenId>>();
  out.suffix = f.at("suffix").get<std::vector<TokenId>>();
  out.corpus_ids = f.at("corpus").at("num_ids").get<std::size_t>();
  out.corpus_fnv1a64 = f.at("corpus").at("fnv1a64").get<std::string>();
  const nlohmann::json& strings = golden.at("strings");
  for (std::size_t i = 0; i < strings.size(); ++i) {
    out.cases.push_back({strings[i].get<std::string>(),
                         f.at("ids").at(i).get<std::vector<TokenId>>(),
                         f.at("decoded").at(i).get<std::string>()});
  }
  return out;
}

inline std::string Fnv1a64Hex(const std::vector<TokenId>& ids) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (TokenId id : ids) {
    const auto u = static_cast<std::uint32_t>(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (u >> (8 * k)) & 0xFF;
      h *= 0x100000001B3ull;
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

// Every golden case: Encode without special tokens, Encode asking for the BOS/EOS the library
// adds, and Decode of the latter.
inline void ExpectMatchesGolden(const TextTokenizer& t, const GoldenFixture& golden) {
  EXPECT_EQ(t.vocab_size(), golden.vocab_size);
  ASSERT_FALSE(golden.cases.empty());
  const bool bos = !golden.prefix.empty(), eos = !golden.suffix.empty();
  for (const GoldenCase& c : golden.cases) {
    std::vector<TokenId> special = golden.prefix;
    special.insert(special.end(), c.ids.begin(), c.ids.end());
    special.insert(special.end(), golden.suffix.begin(), golden.suffix.end());
    EXPECT_EQ(t.Encode(c.text, /*bos=*/false, /*eos=*/false), c.ids) << "text: " << c.text;
    EXPECT_EQ(t.Encode(c.text, bos, eos), special) << "text: " << c.text;
    EXPECT_EQ(t.Decode(special), c.decoded) << "text: " << c.text;
  }
}

}  // namespace fedlora::client::testing_assets
