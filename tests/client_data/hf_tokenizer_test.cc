#include "client/model/hf_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/client_data/test_assets.h"
#include "tests/client_data/tokenizer_golden.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing_assets::ExpectMatchesGolden;
using testing_assets::Fnv1a64Hex;
using testing_assets::GoldenFixture;
using testing_assets::LoadGolden;
using testing_assets::ReadFileForTest;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerFixturePath;

std::unique_ptr<HfTokenizer> LoadOrDie(const std::string& path) {
  Result<std::unique_ptr<HfTokenizer>> t = HfTokenizer::Load(path);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::unique_ptr<HfTokenizer> Fixture(const std::string& name) {
  return LoadOrDie(TokenizerFixturePath(name + "/tokenizer.json"));
}

nlohmann::json FixtureJson(const std::string& name) {
  return nlohmann::json::parse(ReadFileForTest(TokenizerFixturePath(name + "/tokenizer.json")));
}

// Writes `content` as <temp dir>/<dir>/tokenizer.json (a directory of its own, so no
// tokenizer_config.json sits beside it) and returns the path.
std::string WriteTemp(const std::string& dir, const std::string& content) {
  const std::filesystem::path folder = std::filesystem::path(::testing::TempDir()) / dir;
  std::filesystem::create_directories(folder);
  const std::string path = (folder / "tokenizer.json").string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

void ExpectFixtureMatchesGolden(const std::string& name) {
  const std::unique_ptr<HfTokenizer> t = Fixture(name);
  ASSERT_NE(t, nullptr);
  ExpectMatchesGolden(*t, LoadGolden(name));
}

// A tiny BPE tokenizer.json over the vocabulary a b c, with `model` merged into the model object.
std::string TinyBpe(const nlohmann::json& model) {
  nlohmann::json j = {{"version", "1.0"},
                      {"added_tokens", nlohmann::json::array()},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", nullptr},
                      {"post_processor", nullptr},
                      {"decoder", nullptr},
                      {"model",
                       {{"type", "BPE"},
                        {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"bc", 3}, {"ab", 4}, {"abc", 5}}},
                        {"merges", {"b c", "a b"}}}}};
  j["model"].update(model);
  return j.dump();
}

Result<std::unique_ptr<HfTokenizer>> ParseMutated(const std::string& fixture,
                                                  void (*mutate)(nlohmann::json&),
                                                  const std::string& dir) {
  nlohmann::json j = FixtureJson(fixture);
  mutate(j);
  return HfTokenizer::Load(WriteTemp(dir, j.dump()));
}

// ---- Golden encodings from the Python `tokenizers` library ----------------------------------

TEST(HfTokenizerTest, Llama3SplitRegexAndBosTemplateMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("llama3");
}

TEST(HfTokenizerTest, Qwen2NfcAndAddedTokensMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("qwen2");
}

TEST(HfTokenizerTest, Gpt2ByteLevelRegexAndStripFlagsMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("gpt2");
}

TEST(HfTokenizerTest, ByteLevelWithPrefixSpaceMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("gpt2_prefix_space");
}

TEST(HfTokenizerTest, SmolLmDigitsThenByteLevelMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("smollm");
}

TEST(HfTokenizerTest, Llama2ByteFallbackMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("llama2");
}

TEST(HfTokenizerTest, LegacyMetaspacePreTokenizerMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("llama2_metaspace");
}

TEST(HfTokenizerTest, RobertaProcessingMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("gpt2_roberta");
}

TEST(HfTokenizerTest, MetaspaceWithAddPrefixSpaceAndItsDecoderMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("llama2_metaspace_always");
}

TEST(HfTokenizerTest, TemplateAddingBosAndEosMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("llama2_bos_eos");
}

TEST(HfTokenizerTest, SubwordPrefixSuffixUnkAndNfkcMatchTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("wordish");
}

TEST(HfTokenizerTest, EverySplitBehaviorMatchesTokenizersOnEveryGoldenString) {
  ExpectFixtureMatchesGolden("behaviors");
}

TEST(HfTokenizerTest, ByteLevelMatchesTransformersOnEmoji) {
  for (const std::string name : {"llama3", "qwen2", "gpt2"}) {
    const std::unique_ptr<HfTokenizer> t = Fixture(name);
    ASSERT_NE(t, nullptr);
    int checked = 0;
    for (const auto& c : LoadGolden(name).cases) {
      if (c.text.find("\U0001F468\u200D\U0001F469") == std::string::npos) continue;  // ZWJ family
      EXPECT_EQ(t->Encode(c.text, false, false), c.ids) << name;
      EXPECT_EQ(t->Decode(c.ids), c.text) << name;  // Byte-level BPE loses nothing.
      ++checked;
    }
    EXPECT_EQ(checked, 1) << name;
  }
}

TEST(HfTokenizerTest, EveryFixtureEncodesTinyShakespeareToTheIdsOfTokenizers) {
  const std::string corpus = ReadFileForTest(ShakespearePath());
  ASSERT_GT(corpus.size(), 1'000'000u);
  for (const std::string name :
       {"llama3", "qwen2", "gpt2", "gpt2_prefix_space", "smollm", "gpt2_roberta", "llama2",
        "llama2_metaspace", "llama2_metaspace_always", "llama2_bos_eos", "wordish", "behaviors"}) {
    const std::unique_ptr<HfTokenizer> t = Fixture(name);
    ASSERT_NE(t, nullptr);
    const GoldenFixture golden = LoadGolden(name);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<TokenId> ids = t->Encode(corpus, false, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ info ] %-18s %zu bytes -> %zu ids in %.3f s (%.1f MB/s)\n", name.c_str(),
                corpus.size(), ids.size(), seconds, corpus.size() / seconds / 1e6);
    EXPECT_EQ(ids.size(), golden.corpus_ids) << name;
    EXPECT_EQ(Fnv1a64Hex(ids), golden.corpus_fnv1a64) << name;
  }
}

// ---- Round trips -------------------------------------------------------------------------------

TEST(HfTokenizerTest, DecodeRestoresTinyShakespeareExactly) {
  const std::string corpus = ReadFileForTest(ShakespearePath()).substr(0, 200'000);
  for (const std::string name : {"llama3", "qwen2", "gpt2", "smollm", "llama2"}) {
    const std::unique_ptr<HfTokenizer> t = Fixture(name);
    ASSERT_NE(t, nullptr);
    EXPECT_TRUE(t->Decode(t->Encode(corpus, true, true)) == corpus) << name;
  }
}

TEST(HfTokenizerTest, ByteLevelRoundTripsRandomUnicodeText) {
  std::mt19937 rng(7);
  // Code points from ASCII, Latin-1, Cyrillic, CJK, emoji and the supplementary planes.
  const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {0x20, 0x7E},     {0x09, 0x0D},       {0xA0, 0x24F},       {0x400, 0x4FF},
      {0x4E00, 0x4FFF}, {0x1F300, 0x1F6FF}, {0x10000, 0x10FFFF}, {0x300, 0x36F}};
  const std::unique_ptr<HfTokenizer> llama3 = Fixture("llama3");
  const std::unique_ptr<HfTokenizer> gpt2 = Fixture("gpt2");
  ASSERT_NE(llama3, nullptr);
  ASSERT_NE(gpt2, nullptr);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int n = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < n; ++i) {
      const auto& [lo, hi] =
          ranges[std::uniform_int_distribution<std::size_t>(0, ranges.size() - 1)(rng)];
      char32_t cp = std::uniform_int_distribution<std::uint32_t>(lo, hi)(rng);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      // UTF-8 by hand, to keep the test independent of the code under test.
      if (cp < 0x80) {
        text += static_cast<char>(cp);
      } else if (cp < 0x800) {
        text += static_cast<char>(0xC0 | (cp >> 6));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        text += static_cast<char>(0xE0 | (cp >> 12));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        text += static_cast<char>(0xF0 | (cp >> 18));
        text += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    ASSERT_EQ(llama3->Decode(llama3->Encode(text, true, true)), text);
    ASSERT_EQ(gpt2->Decode(gpt2->Encode(text, false, false)), text);
  }
}

TEST(HfTokenizerTest, InvalidUtf8IsRepairedLikeFromUtf8LossyBeforeEncoding) {
  const std::unique_ptr<HfTokenizer> t = Fixture("llama3");
  ASSERT_NE(t, nullptr);
  // \xE4\xBD is one truncated sequence (one U+FFFD); \xFF is another.
  EXPECT_EQ(t->Encode("a\xE4\xBD b\xFF", false, false), t->Encode("a\uFFFD b\uFFFD", false, false));
}

TEST(HfTokenizerTest, ByteLevelDecoderTurnsAnIncompleteSequenceIntoOneReplacementCharacter) {
  const std::unique_ptr<HfTokenizer> t = Fixture("llama3");
  ASSERT_NE(t, nullptr);
  // Bytes E4 BD are the pieces "ä" and "½" in GPT-2's byte map; together an unfinished "你".
  const std::vector<TokenId> ids = {t->PieceToId("a"), t->PieceToId("ä"), t->PieceToId("½"),
                                    t->PieceToId("b")};
  EXPECT_EQ(t->Decode(ids), "a\uFFFDb");
}

TEST(HfTokenizerTest, ByteFallbackDecoderTurnsEachInvalidByteIntoAReplacementCharacter) {
  const std::unique_ptr<HfTokenizer> t = Fixture("llama2");
  ASSERT_NE(t, nullptr);
  const std::vector<TokenId> ids = {t->PieceToId("▁a"), t->PieceToId("<0xE4>"),
                                    t->PieceToId("<0xBD>"), t->PieceToId("▁b")};
  EXPECT_EQ(t->Decode(ids), "a\uFFFD\uFFFD b");
  const std::vector<TokenId> whole = {t->PieceToId("<0xE4>"), t->PieceToId("<0xBD>"),
                                      t->PieceToId("<0xA0>")};
  EXPECT_EQ(t->Decode(whole), "你");
}

// ---- Special tokens, BOS / EOS -----------------------------------------------------------------

TEST(HfTokenizerTest, BosComesFromTheTemplateAndEosFromTheConfigOrWellKnownNames) {
  const std::unique_ptr<HfTokenizer> llama3 = Fixture("llama3");
  const std::unique_ptr<HfTokenizer> qwen2 = Fixture("qwen2");
  const std::unique_ptr<HfTokenizer> gpt2 = Fixture("gpt2");
  const std::unique_ptr<HfTokenizer> llama2 = Fixture("llama2");
  const std::unique_ptr<HfTokenizer> metaspace = Fixture("llama2_metaspace");
  ASSERT_TRUE(llama3 && qwen2 && gpt2 && llama2 && metaspace);
  EXPECT_EQ(llama3->bos_id(), llama3->PieceToId("<|begin_of_text|>"));
  EXPECT_EQ(llama3->eos_id(), llama3->PieceToId("<|end_of_text|>"));  // {"content": ...} config.
  EXPECT_EQ(qwen2->bos_id(), -1);
  EXPECT_EQ(qwen2->eos_id(), qwen2->PieceToId("<|endoftext|>"));  // From tokenizer_config.json.
  EXPECT_EQ(gpt2->bos_id(), -1);
  EXPECT_EQ(gpt2->eos_id(), gpt2->PieceToId("<|endoftext|>"));  // No config: well-known name.
  EXPECT_EQ(llama2->bos_id(), 1);
  EXPECT_EQ(llama2->eos_id(), 2);
  EXPECT_EQ(metaspace->eos_id(), 2);
  EXPECT_THAT(llama2->Encode("", true, true), ElementsAre(1, 2));
  EXPECT_THAT(qwen2->Encode("", true, true), ElementsAre(qwen2->eos_id()));
  const std::vector<TokenId> hi = llama3->Encode("Hi", true, true);
  ASSERT_GE(hi.size(), 3u);
  EXPECT_EQ(hi.front(), llama3->bos_id());
  EXPECT_EQ(hi.back(), llama3->eos_id());
}

TEST(HfTokenizerTest, SpecialTokensInTextBecomeTheirIdsAndDecodeLeavesThemOut) {
  const std::unique_ptr<HfTokenizer> t = Fixture("qwen2");
  ASSERT_NE(t, nullptr);
  const TokenId start = t->PieceToId("<|im_start|>"), end = t->PieceToId("<|im_end|>");
  const TokenId think = t->PieceToId("<think>");
  ASSERT_TRUE(start >= 0 && end >= 0 && think >= 0);
  EXPECT_TRUE(t->IsSpecial(start));
  EXPECT_FALSE(t->IsSpecial(think));
  const std::vector<TokenId> ids = t->Encode("<|im_start|>user<|im_end|><think>", false, false);
  EXPECT_EQ(ids.front(), start);
  EXPECT_EQ(ids.back(), think);
  EXPECT_EQ(t->Decode(ids), "user<think>");  // Non-special added tokens are text.
  EXPECT_EQ(t->IdToPiece(end), "<|im_end|>");
  EXPECT_EQ(t->IdToPiece(-1), "");
  EXPECT_EQ(t->PieceToId("no such piece"), -1);
}

TEST(HfTokenizerTest, DecodeSkipsIdsOutsideTheVocabulary) {
  const std::unique_ptr<HfTokenizer> t = Fixture("gpt2");
  ASSERT_NE(t, nullptr);
  const std::vector<TokenId> ids = {-5, t->PieceToId("a"), t->vocab_size(), 1 << 30};
  EXPECT_EQ(t->Decode(ids), "a");
}

TEST(HfTokenizerTest, DescribeNamesTheFamilyAndCounts) {
  const std::unique_ptr<HfTokenizer> llama3 = Fixture("llama3");
  const std::unique_ptr<HfTokenizer> llama2 = Fixture("llama2");
  ASSERT_TRUE(llama3 && llama2);
  EXPECT_EQ(llama3->Describe(), "hf byte-level BPE (1000 + 4 added)");
  EXPECT_EQ(llama2->Describe(), "hf BPE with byte fallback (1000 + 0 added)");
}

// ---- BPE model details on tiny hand-written files ---------------------------------------------

TEST(HfTokenizerTest, IgnoreMergesTakesAWordThatIsInTheVocabularyWhole) {
  auto with_merges = HfTokenizer::Parse(TinyBpe({{"ignore_merges", false}}), "tiny.json");
  auto without = HfTokenizer::Parse(TinyBpe({{"ignore_merges", true}}), "tiny.json");
  ASSERT_TRUE(with_merges.ok()) << with_merges.status().ToString();
  ASSERT_TRUE(without.ok()) << without.status().ToString();
  // Merge rank 0 is "b c", so merging "abc" gives a + bc and never reaches "abc".
  EXPECT_THAT((*with_merges)->Encode("abc", false, false), ElementsAre(0, 3));
  EXPECT_THAT((*without)->Encode("abc", false, false), ElementsAre(5));
  EXPECT_THAT((*without)->Encode("abcab", false, false), ElementsAre(0, 3, 4));
}

TEST(HfTokenizerTest, MergesAsPairsAndAsStringsGiveTheSameTokenizer) {
  nlohmann::json pairs = FixtureJson("gpt2");
  nlohmann::json converted = nlohmann::json::array();
  for (const auto& m : pairs["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    converted.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  pairs["model"]["merges"] = converted;
  auto a = HfTokenizer::Parse(pairs.dump(), "pairs.json");
  const std::unique_ptr<HfTokenizer> b = Fixture("gpt2");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_NE(b, nullptr);
  const std::string text = ReadFileForTest(ShakespearePath()).substr(0, 20'000);
  EXPECT_EQ((*a)->Encode(text, false, false), b->Encode(text, false, false));
}

TEST(HfTokenizerTest, UnknownCharactersBecomeUnkTokensFusedWhenAsked) {
  const nlohmann::json vocab = {{"<unk>", 0}, {"a", 1}, {"b", 2}};
  auto fused = HfTokenizer::Parse(TinyBpe({{"vocab", vocab},
                                           {"merges", nlohmann::json::array()},
                                           {"unk_token", "<unk>"},
                                           {"fuse_unk", true}}),
                                  "fused.json");
  auto separate = HfTokenizer::Parse(TinyBpe({{"vocab", vocab},
                                              {"merges", nlohmann::json::array()},
                                              {"unk_token", "<unk>"},
                                              {"fuse_unk", false}}),
                                     "separate.json");
  ASSERT_TRUE(fused.ok()) << fused.status().ToString();
  ASSERT_TRUE(separate.ok()) << separate.status().ToString();
  EXPECT_THAT((*fused)->Encode("axéb", false, false), ElementsAre(1, 0, 2));
  EXPECT_THAT((*separate)->Encode("axéb", false, false), ElementsAre(1, 0, 0, 2));
  EXPECT_EQ((*fused)->Decode(std::vector<TokenId>{1, 0, 2}), "a <unk> b");  // No decoder: " ".
}

// ---- Malformed and unsupported files -----------------------------------------------------------

TEST(HfTokenizerTest, MissingFileIsNotFoundNamingTheFile) {
  const std::string path = TokenizerFixturePath("no/such/tokenizer.json");
  auto t = HfTokenizer::Load(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
}

TEST(HfTokenizerTest, TruncatedJsonIsInvalidArgumentNamingTheFile) {
  const std::string json = ReadFileForTest(TokenizerFixturePath("llama3/tokenizer.json"));
  const std::string path = WriteTemp("truncated", json.substr(0, json.size() / 2));
  auto t = HfTokenizer::Load(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr(path));
  EXPECT_THAT(t.status().message(), HasSubstr("not valid JSON"));
}

TEST(HfTokenizerTest, UnigramAndWordPieceModelsAreUnimplementedNamingTheKey) {
  for (const std::string type : {"Unigram", "WordPiece"}) {
    nlohmann::json j = FixtureJson("llama2");
    j["model"]["type"] = type;
    const std::string path = WriteTemp("model_" + type, j.dump());
    auto t = HfTokenizer::Load(path);
    ASSERT_FALSE(t.ok()) << type;
    EXPECT_EQ(t.status().code(), StatusCode::kUnimplemented);
    EXPECT_THAT(t.status().message(), HasSubstr(path));
    EXPECT_THAT(t.status().message(), HasSubstr("model.type"));
  }
}

TEST(HfTokenizerTest, UnknownModelTypeIsInvalidArgumentNamingTheKey) {
  auto t = ParseMutated(
      "gpt2", [](nlohmann::json& j) { j["model"]["type"] = "Magic"; }, "magic");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("magic/tokenizer.json"));
  EXPECT_THAT(t.status().message(), HasSubstr("model.type"));
}

TEST(HfTokenizerTest, MergeNamingAnUnknownTokenIsInvalidArgumentNamingTheMerge) {
  auto t = ParseMutated(
      "llama3",
      [](nlohmann::json& j) {
        j["model"]["merges"][3] = {"Ġt", "no-such-piece"};
      },
      "bad_merge");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("bad_merge/tokenizer.json"));
  EXPECT_THAT(t.status().message(), HasSubstr("model.merges[3]"));
  EXPECT_THAT(t.status().message(), HasSubstr("no-such-piece"));

  auto legacy = ParseMutated(
      "gpt2", [](nlohmann::json& j) { j["model"]["merges"][0] = "a b c"; }, "bad_legacy");
  ASSERT_FALSE(legacy.ok());
  EXPECT_EQ(legacy.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(legacy.status().message(), HasSubstr("model.merges[0]"));
}

TEST(HfTokenizerTest, DuplicateIdsAreInvalidArgumentNamingTheFile) {
  auto vocab = ParseMutated(
      "gpt2", [](nlohmann::json& j) { j["model"]["vocab"]["zzzz"] = 5; }, "dup_vocab");
  ASSERT_FALSE(vocab.ok());
  EXPECT_EQ(vocab.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(), HasSubstr("dup_vocab/tokenizer.json"));
  EXPECT_THAT(vocab.status().message(), HasSubstr("duplicate ids"));

  auto added = ParseMutated(
      "qwen2", [](nlohmann::json& j) { j["added_tokens"][1]["id"] = j["added_tokens"][0]["id"]; },
      "dup_added");
  ASSERT_FALSE(added.ok());
  EXPECT_EQ(added.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(added.status().message(), HasSubstr("added_tokens[1].id"));
}

TEST(HfTokenizerTest, UnsupportedComponentsAreUnimplementedNamingTheKey) {
  auto normalizer = ParseMutated(
      "llama2",
      [](nlohmann::json& j) {
        j["normalizer"]["normalizers"][1] = {{"type", "Lowercase"}};
      },
      "lowercase");
  ASSERT_FALSE(normalizer.ok());
  EXPECT_EQ(normalizer.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(normalizer.status().message(), HasSubstr("lowercase/tokenizer.json"));
  EXPECT_THAT(normalizer.status().message(), HasSubstr("normalizer.normalizers[1].type"));

  auto pre = ParseMutated(
      "gpt2",
      [](nlohmann::json& j) {
        j["pre_tokenizer"] = {{"type", "Whitespace"}};
      },
      "whitespace");
  ASSERT_FALSE(pre.ok());
  EXPECT_EQ(pre.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(pre.status().message(), HasSubstr("pre_tokenizer.type"));

  auto unknown = ParseMutated(
      "gpt2",
      [](nlohmann::json& j) {
        j["decoder"] = {{"type", "Telepathy"}};
      },
      "telepathy");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("decoder.type"));

  auto dropout = ParseMutated(
      "llama2", [](nlohmann::json& j) { j["model"]["dropout"] = 0.1; }, "dropout");
  ASSERT_FALSE(dropout.ok());
  EXPECT_EQ(dropout.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(dropout.status().message(), HasSubstr("model.dropout"));
}

TEST(HfTokenizerTest, RegexThatPcre2RejectsIsInvalidArgumentNamingTheKey) {
  auto t = ParseMutated(
      "llama3",
      [](nlohmann::json& j) {
        j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}";
      },
      "bad_regex");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("bad_regex/tokenizer.json"));
  EXPECT_THAT(t.status().message(), HasSubstr("pre_tokenizer.pretokenizers[0].pattern"));
}

TEST(HfTokenizerTest, ConfigNamingAnUnknownEosIsInvalidArgumentNamingTheConfig) {
  const std::string json = ReadFileForTest(TokenizerFixturePath("qwen2/tokenizer.json"));
  auto t = HfTokenizer::Parse(json, "qwen2.json", R"({"eos_token": "<|nope|>"})", "config.json");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("config.json"));
  EXPECT_THAT(t.status().message(), HasSubstr("<|nope|>"));

  auto garbled = HfTokenizer::Parse(json, "qwen2.json", R"({"eos_token": )", "config.json");
  ASSERT_FALSE(garbled.ok());
  EXPECT_EQ(garbled.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(garbled.status().message(), HasSubstr("config.json"));
}

TEST(HfTokenizerTest, WrongJsonTypesAreInvalidArgumentNamingTheKey) {
  auto t = ParseMutated(
      "gpt2",
      [](nlohmann::json& j) {
        j["model"]["vocab"] = {1, 2, 3};
      },
      "vocab_array");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("model.vocab"));

  auto no_model = ParseMutated(
      "gpt2", [](nlohmann::json& j) { j.erase("model"); }, "no_model");
  ASSERT_FALSE(no_model.ok());
  EXPECT_EQ(no_model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(no_model.status().message(), HasSubstr("'model'"));
}

}  // namespace
}  // namespace fedlora::client
