#include "client/model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "client/data/text_dataset.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerPath;

constexpr std::int32_t kVocab = 512;

Tokenizer LoadTok512() {
  Result<Tokenizer> t = Tokenizer::Load(TokenizerPath(), kVocab);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string WriteTemp(const std::string& name, std::string_view bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// A literal transcription of llama2.c run.c's encode() loop (O(n²) merges), the reference the
// fast Encode must match token for token.
std::vector<TokenId> RunCEncode(const Tokenizer& t, std::string_view text, bool bos, bool eos) {
  std::vector<TokenId> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(t.Lookup(" "));
  std::string buffer;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) buffer.clear();
    buffer.push_back(static_cast<char>(c));
    const bool next_is_continuation =
        i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && buffer.size() < 4) continue;
    const TokenId id = t.Lookup(buffer);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char b : buffer) tokens.push_back(static_cast<unsigned char>(b) + 3);
    }
    buffer.clear();
  }
  while (true) {
    float best_score = -1e10f;
    TokenId best_id = -1;
    std::ptrdiff_t best_idx = -1;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      const TokenId id = t.Lookup(t.piece(tokens[i]) + t.piece(tokens[i + 1]));
      if (id != -1 && t.score(id) > best_score) {
        best_score = t.score(id);
        best_id = id;
        best_idx = static_cast<std::ptrdiff_t>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

// Random text from an alphabet that mixes frequent pieces, ties and multi-byte code points
// (some outside the vocabulary, so byte fallback is exercised), plus stray invalid bytes.
std::string RandomText(std::mt19937_64& rng, std::size_t length) {
  static const std::vector<std::string> kAlphabet = {
      "a", "e", "t", "h", " ", " ", "n", "d", "o", "s", "\n", "\n\n", "Lily", " the", "ing",
      "é", "ü", "日本", "😀", "\t", ".", ",", "!", "A", "Z", "q", "x", "\xff", "\x80", "  "};
  std::string out;
  while (out.size() < length) out += kAlphabet[UniformBelow(rng, kAlphabet.size())];
  return out;
}

TEST(TokenizerTest, LoadsTok512WithItsSpecialAndBytePieces) {
  const Tokenizer t = LoadTok512();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.max_token_length(), 7);
  EXPECT_EQ(t.piece(Tokenizer::kBos), "\n<s>\n");
  EXPECT_EQ(t.piece(Tokenizer::kEos), "\n</s>\n");
  EXPECT_EQ(t.piece(13), "<0x0A>");
  EXPECT_EQ(t.piece(258), "<0xFF>");
}

TEST(TokenizerTest, EncodesOnceUponATimeLikeRunC) {
  const Tokenizer t = LoadTok512();
  EXPECT_THAT(t.Encode("Once upon a time", /*bos=*/true, /*eos=*/false),
              ElementsAre(1, 403, 407, 261, 378));
  EXPECT_THAT(t.Encode("Once upon a time", /*bos=*/false, /*eos=*/true),
              ElementsAre(403, 407, 261, 378, 2));
}

TEST(TokenizerTest, KnowsLilyAndEncodesNewlineAsItsByteToken) {
  const Tokenizer t = LoadTok512();
  EXPECT_EQ(t.Lookup(" Lily"), 317);
  EXPECT_EQ(t.Lookup("\n"), -1);
  EXPECT_THAT(t.Encode("Lily", false, false), ElementsAre(317));
  const std::vector<TokenId> tokens = t.Encode("a\nb", false, false);
  EXPECT_NE(std::find(tokens.begin(), tokens.end(), 13), tokens.end());
}

TEST(TokenizerTest, EncodesEmptyTextWithoutDummyPrefix) {
  const Tokenizer t = LoadTok512();
  EXPECT_TRUE(t.Encode("", false, false).empty());
  EXPECT_THAT(t.Encode("", true, true), ElementsAre(1, 2));
}

TEST(TokenizerTest, MatchesRunCReferenceOnRandomText) {
  const Tokenizer t = LoadTok512();
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = RandomText(rng, UniformBelow(rng, 120));
    const bool bos = trial % 2 == 0, eos = trial % 3 == 0;
    ASSERT_EQ(t.Encode(text, bos, eos), RunCEncode(t, text, bos, eos)) << "text: " << text;
  }
}

TEST(TokenizerTest, MatchesRunCReferenceOnRandomBytes) {
  const Tokenizer t = LoadTok512();
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text(UniformBelow(rng, 40) + 1, '\0');
    for (char& c : text) c = static_cast<char>(1 + UniformBelow(rng, 255));  // No NUL, as in C.
    ASSERT_EQ(t.Encode(text, true, false), RunCEncode(t, text, true, false));
  }
}

TEST(TokenizerTest, MatchesRunCReferenceOnShakespeareExcerpts) {
  const Tokenizer t = LoadTok512();
  const std::string corpus = ReadAll(ShakespearePath());
  ASSERT_GT(corpus.size(), 1'000'000u);
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t length = 1 + UniformBelow(rng, 400);
    const std::string text = corpus.substr(UniformBelow(rng, corpus.size() - length), length);
    ASSERT_EQ(t.Encode(text, true, false), RunCEncode(t, text, true, false)) << "text: " << text;
  }
}

TEST(TokenizerTest, DecodeInvertsEncodeOnRandomText) {
  const Tokenizer t = LoadTok512();
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = RandomText(rng, UniformBelow(rng, 200));
    ASSERT_EQ(t.Decode(t.Encode(text, true, true)), text);
  }
}

TEST(TokenizerTest, DecodeInvertsEncodeOnTheWholeShakespeareCorpus) {
  const Tokenizer t = LoadTok512();
  const std::string corpus = ReadAll(ShakespearePath());
  const std::vector<TokenId> tokens = t.Encode(corpus, true, false);
  EXPECT_LT(tokens.size(), corpus.size() * 3 / 4);  // Merges happened (TinyStories vocabulary).
  EXPECT_EQ(t.Decode(tokens), corpus);
}

TEST(TokenizerTest, DecodeStripsTheSpaceAfterBosAndTurnsByteTokensIntoBytes) {
  const Tokenizer t = LoadTok512();
  EXPECT_EQ(t.DecodePiece(Tokenizer::kBos, 403), "Once");
  EXPECT_EQ(t.DecodePiece(403, 407), " upon");
  EXPECT_EQ(t.DecodePiece(-1, 13), "\n");
  EXPECT_EQ(t.DecodePiece(Tokenizer::kBos, 3 + ' '), " ");  // run.c strips raw pieces only.
  EXPECT_EQ(t.Decode(std::vector<TokenId>{1, 403, 407, 261, 378}), "Once upon a time");
}

TEST(TokenizerTest, LoadNamesAMissingFile) {
  const Result<Tokenizer> t = Tokenizer::Load("/nonexistent/tok.bin", kVocab);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("/nonexistent/tok.bin"));
}

TEST(TokenizerTest, LoadReportsATruncatedFileAsDataLossNamingIt) {
  const std::string bytes = ReadAll(TokenizerPath());
  for (std::size_t keep : {std::size_t{2}, std::size_t{100}, bytes.size() - 1}) {
    const std::string path = WriteTemp("tok_truncated.bin", std::string_view(bytes).substr(0, keep));
    const Result<Tokenizer> t = Tokenizer::Load(path, kVocab);
    ASSERT_FALSE(t.ok()) << keep;
    EXPECT_EQ(t.status().code(), StatusCode::kDataLoss) << t.status().ToString();
    EXPECT_THAT(t.status().message(), HasSubstr(path));
  }
}

TEST(TokenizerTest, LoadRejectsAGarbledPieceLength) {
  std::string bytes = ReadAll(TokenizerPath());
  const std::int32_t garbage = -5;
  std::memcpy(&bytes[4 + 4], &garbage, 4);  // Length field of piece 0.
  const std::string path = WriteTemp("tok_garbled.bin", bytes);
  const Result<Tokenizer> t = Tokenizer::Load(path, kVocab);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
  EXPECT_THAT(t.status().message(), HasSubstr("piece 0"));
}

TEST(TokenizerTest, LoadRejectsAVocabSizeSmallerThanTheFile) {
  const Result<Tokenizer> t = Tokenizer::Load(TokenizerPath(), 500);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("this model's tokenizer"));
}

TEST(TokenizerTest, LoadRejectsAVocabWithoutByteFallbackPieces) {
  EXPECT_EQ(Tokenizer::Load(TokenizerPath(), 100).status().code(), StatusCode::kInvalidArgument);
}

// Found by fuzzing: the tables were sized from the header's vocab_size before any record was
// read, so 8 bytes claiming 2^31 - 1 pieces asked for about 70 GB.
TEST(TokenizerTest, ParseRefusesAVocabSizeTheBytesCannotHoldBeforeAllocating) {
  std::vector<std::byte> bytes(8, std::byte{0});
  bytes[0] = std::byte{16};  // max_token_length 16, then a single empty record's worth of bytes.
  const Result<Tokenizer> t =
      Tokenizer::Parse(bytes, std::numeric_limits<std::int32_t>::max(), "tiny.bin");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("tiny.bin"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("truncated"));
}

}  // namespace
}  // namespace fedlora::client
