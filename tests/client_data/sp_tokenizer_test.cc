#include "client/model/sp_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/client_data/test_assets.h"
#include "tests/client_data/tokenizer_golden.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_assets::ExpectMatchesGolden;
using testing_assets::Fnv1a64Hex;
using testing_assets::LoadGolden;
using testing_assets::ReadFileForTest;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerFixturePath;

std::unique_ptr<SentencePieceTokenizer> LoadFixture() {
  auto t = SentencePieceTokenizer::Load(TokenizerFixturePath("sp/tokenizer.model"));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = (std::filesystem::path(::testing::TempDir()) / name).string();
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(SentencePieceTokenizerTest, MatchesPythonSentencePieceOnEveryGoldenString) {
  const std::unique_ptr<SentencePieceTokenizer> t = LoadFixture();
  ASSERT_NE(t, nullptr);
  ExpectMatchesGolden(*t, LoadGolden("sp"));
}

TEST(SentencePieceTokenizerTest, EncodesTinyShakespeareToTheIdsOfPythonSentencePiece) {
  const std::unique_ptr<SentencePieceTokenizer> t = LoadFixture();
  ASSERT_NE(t, nullptr);
  const auto golden = LoadGolden("sp");
  const std::string corpus = ReadFileForTest(ShakespearePath());
  const std::vector<TokenId> ids = t->Encode(corpus, false, false);
  EXPECT_EQ(ids.size(), golden.corpus_ids);
  EXPECT_EQ(Fnv1a64Hex(ids), golden.corpus_fnv1a64);
  EXPECT_TRUE(t->Decode(ids) == corpus);
}

TEST(SentencePieceTokenizerTest, ControlPiecesInTextBecomeTheirIdsAndDecodeDropsThem) {
  const std::unique_ptr<SentencePieceTokenizer> t = LoadFixture();
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  const std::vector<TokenId> ids = t->Encode("<s>hi</s>", false, false);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(t->Decode(ids), "hi");
  EXPECT_THAT(t->Encode("", true, true), ElementsAre(1, 2));
  EXPECT_EQ(t->Decode(t->Encode("To be, or not to be", true, true)), "To be, or not to be");
}

TEST(SentencePieceTokenizerTest, PieceToIdIsMinusOneForTextThatIsNoPiece) {
  const std::unique_ptr<SentencePieceTokenizer> t = LoadFixture();
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->PieceToId("<unk>"), 0);
  EXPECT_EQ(t->PieceToId("<0x41>"), 3 + 0x41);
  EXPECT_EQ(t->PieceToId("no such piece"), -1);
  EXPECT_EQ(t->vocab_size(), 1000);
  EXPECT_EQ(t->Describe(), "sentencepiece model (1000 pieces)");
  const std::vector<TokenId> out_of_range = {-1, 5000, t->PieceToId("<0x41>")};
  EXPECT_EQ(t->Decode(out_of_range), "A");
}

TEST(SentencePieceTokenizerTest, MissingFileIsNotFoundNamingTheFile) {
  const std::string path = TokenizerFixturePath("sp/missing.model");
  auto t = SentencePieceTokenizer::Load(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
}

TEST(SentencePieceTokenizerTest, GarbageAndTruncatedModelsAreInvalidArgumentNamingTheFile) {
  const std::string model = ReadFileForTest(TokenizerFixturePath("sp/tokenizer.model"));
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"truncated.model", model.substr(0, model.size() / 2)},
           {"garbage.model", std::string("this is not a protobuf \xff\xfe\x01", 26)},
           {"empty.model", ""}}) {
    const std::string path = WriteTemp(name, bytes);
    auto t = SentencePieceTokenizer::Load(path);
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(t.status().message(), HasSubstr(path));
  }
}

}  // namespace
}  // namespace fedlora::client
