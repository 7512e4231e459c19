#include "client/model/load_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing_assets::TokenizerFixturePath;
using testing_assets::TokenizerPath;

TEST(LoadTokenizerTest, PicksTheImplementationByFileName) {
  auto json = LoadTokenizer(TokenizerFixturePath("llama3/tokenizer.json"), 1024);
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_THAT((*json)->Describe(), StartsWith("hf byte-level BPE"));

  auto model = LoadTokenizer(TokenizerFixturePath("sp/tokenizer.model"), 1000);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_THAT((*model)->Describe(), StartsWith("sentencepiece"));

  auto bin = LoadTokenizer(TokenizerPath(), 512);
  ASSERT_TRUE(bin.ok()) << bin.status().ToString();
  EXPECT_THAT((*bin)->Describe(), StartsWith("llama2.c"));
  EXPECT_EQ((*bin)->vocab_size(), 512);
  EXPECT_EQ((*bin)->Decode((*bin)->Encode("Once upon a time", true, true)), "Once upon a time");
}

TEST(LoadTokenizerTest, DirectoryMeansItsTokenizerJsonElseItsTokenizerModel) {
  auto hf = LoadTokenizer(TokenizerFixturePath("qwen2"), 0);
  ASSERT_TRUE(hf.ok()) << hf.status().ToString();
  EXPECT_THAT((*hf)->Describe(), StartsWith("hf byte-level BPE"));
  EXPECT_EQ((*hf)->eos_id(), (*hf)->PieceToId("<|endoftext|>"));  // Its tokenizer_config.json.

  auto sp = LoadTokenizer(TokenizerFixturePath("sp"), 0);
  ASSERT_TRUE(sp.ok()) << sp.status().ToString();
  EXPECT_THAT((*sp)->Describe(), StartsWith("sentencepiece"));

  const std::string empty = ::testing::TempDir() + "/empty_tokenizer_dir";
  std::filesystem::create_directories(empty);
  auto none = LoadTokenizer(empty, 0);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr(empty));
}

TEST(LoadTokenizerTest, TokenizerLargerThanTheModelVocabularyIsRejectedNamingBothSizes) {
  const std::string path = TokenizerFixturePath("llama3/tokenizer.json");
  auto t = LoadTokenizer(path, 1000);  // The fixture has 1000 pieces + 4 added tokens.
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
  EXPECT_THAT(t.status().message(), HasSubstr("1003"));
  EXPECT_THAT(t.status().message(), HasSubstr("1000"));

  // A model may pad its vocabulary beyond the tokenizer's; <= 0 skips the check.
  EXPECT_TRUE(LoadTokenizer(path, 1004).ok());
  EXPECT_TRUE(LoadTokenizer(path, 128256).ok());
  EXPECT_TRUE(LoadTokenizer(path, 0).ok());
  EXPECT_TRUE(LoadTokenizer(path, -1).ok());
}

TEST(LoadTokenizerTest, UnknownExtensionsAndMissingFilesAreErrorsNamingThePath) {
  const std::string txt = ::testing::TempDir() + "/tokenizer.txt";
  std::ofstream(txt) << "hello";
  auto unknown = LoadTokenizer(txt, 0);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr(txt));

  const std::string missing = TokenizerFixturePath("nowhere/tokenizer.json");
  auto gone = LoadTokenizer(missing, 0);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(), HasSubstr(missing));

  auto bin = LoadTokenizer(TokenizerPath(), 0);  // A .bin needs the model's vocabulary size.
  ASSERT_FALSE(bin.ok());
  EXPECT_EQ(bin.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bin.status().message(), HasSubstr(TokenizerPath()));
}

TEST(LoadTokenizerTest, ErrorsOfTheChosenImplementationPassThrough) {
  const std::string dir = ::testing::TempDir() + "/broken_tokenizer_dir";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << "{\"model\": {\"type\": \"Unigram\"}}";
  auto t = LoadTokenizer(dir, 0);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(t.status().message(), HasSubstr(dir + "/tokenizer.json"));
}

}  // namespace
}  // namespace fedlora::client
