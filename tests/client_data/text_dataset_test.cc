#include "client/data/text_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "tests/client_data/partition_expect.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerPath;

using Partitions = std::vector<std::vector<std::size_t>>;

const std::vector<std::string>& ShakespeareParagraphs() {
  static const std::vector<std::string> paragraphs = [] {
    Result<std::string> text = ReadTextFile(ShakespearePath());
    FEDLORA_CHECK(text.ok());
    return SplitParagraphs(*text);
  }();
  return paragraphs;
}

Partitions PartitionOrDie(std::span<const std::string> paragraphs, Partitioner p,
                          std::uint32_t n, std::uint64_t seed) {
  Result<Partitions> parts = PartitionParagraphs(paragraphs, {p, n, seed});
  EXPECT_TRUE(parts.ok()) << parts.status().ToString();
  return std::move(parts).value();
}

using testing_assets::ExpectDisjointCover;

std::string WriteTempText(const std::string& name, std::string_view bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(TextDatasetTest, SplitsParagraphsOnBlankLines) {
  EXPECT_THAT(SplitParagraphs("A:\nx\ny\n\n\nB:\nz\n \t\n\nC:\nw\n"),
              ElementsAre("A:\nx\ny", "B:\nz", "C:\nw"));
  EXPECT_THAT(SplitParagraphs("\n\nonly\n"), ElementsAre("only"));
  EXPECT_TRUE(SplitParagraphs("").empty());
}

TEST(TextDatasetTest, SplitsTinyShakespeareIntoSpeakerTurns) {
  const auto& paragraphs = ShakespeareParagraphs();
  EXPECT_EQ(paragraphs.size(), 7222u);
  EXPECT_EQ(SpeakerOf(paragraphs.front()), "First Citizen");
  EXPECT_THAT(paragraphs.front(), HasSubstr("Before we proceed any further"));
}

TEST(TextDatasetTest, SpeakerOfDropsOneTrailingColonOfTheFirstLine) {
  EXPECT_EQ(SpeakerOf("KING RICHARD II:\nline"), "KING RICHARD II");
  EXPECT_EQ(SpeakerOf("no colon here\nx"), "no colon here");
  EXPECT_EQ(SpeakerOf("A::"), "A:");
}

TEST(TextDatasetTest, EveryPartitionerGivesDisjointPartitionsCoveringTheCorpus) {
  const auto& paragraphs = ShakespeareParagraphs();
  for (Partitioner p : {Partitioner::kIid, Partitioner::kContiguous, Partitioner::kSpeaker}) {
    for (std::uint32_t n : {1u, 3u, 8u}) {
      SCOPED_TRACE(StrCat(PartitionerName(p), " x ", n));
      const Partitions parts = PartitionOrDie(paragraphs, p, n, 42);
      ASSERT_EQ(parts.size(), n);
      ExpectDisjointCover(parts, paragraphs.size());
      for (const auto& part : parts) EXPECT_FALSE(part.empty());
    }
  }
}

TEST(TextDatasetTest, PartitionsAreReproducibleFromTheSeed) {
  const auto& paragraphs = ShakespeareParagraphs();
  for (Partitioner p : {Partitioner::kIid, Partitioner::kContiguous, Partitioner::kSpeaker}) {
    EXPECT_EQ(PartitionOrDie(paragraphs, p, 5, 9), PartitionOrDie(paragraphs, p, 5, 9));
  }
  EXPECT_NE(PartitionOrDie(paragraphs, Partitioner::kIid, 5, 9),
            PartitionOrDie(paragraphs, Partitioner::kIid, 5, 10));
}

TEST(TextDatasetTest, IidPartitionSizesDifferByAtMostOneParagraph) {
  const Partitions parts = PartitionOrDie(ShakespeareParagraphs(), Partitioner::kIid, 7, 1);
  const auto [lo, hi] = std::minmax_element(
      parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });
  EXPECT_LE(hi->size() - lo->size(), 1u);
}

TEST(TextDatasetTest, ContiguousPartitionsAreConsecutiveRunsOfAboutEqualCharacters) {
  const auto& paragraphs = ShakespeareParagraphs();
  const Partitions parts = PartitionOrDie(paragraphs, Partitioner::kContiguous, 4, 0);
  std::size_t next = 0, total = 0, longest = 0;
  for (const auto& p : paragraphs) total += p.size(), longest = std::max(longest, p.size());
  for (const auto& part : parts) {
    ASSERT_FALSE(part.empty());
    EXPECT_EQ(part.front(), next);
    EXPECT_EQ(part.back() - part.front() + 1, part.size());  // No gaps.
    next = part.back() + 1;
    std::size_t chars = 0;
    for (std::size_t i : part) chars += paragraphs[i].size();
    EXPECT_NEAR(double(chars), double(total) / 4, double(longest));
  }
}

TEST(TextDatasetTest, SpeakerPartitionNeverSplitsACharacter) {
  const auto& paragraphs = ShakespeareParagraphs();
  const Partitions parts = PartitionOrDie(paragraphs, Partitioner::kSpeaker, 6, 0);
  std::map<std::string_view, std::set<std::size_t>> parts_of_speaker;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    for (std::size_t i : parts[k]) parts_of_speaker[SpeakerOf(paragraphs[i])].insert(k);
  }
  EXPECT_GT(parts_of_speaker.size(), 300u);
  for (const auto& [speaker, where] : parts_of_speaker) EXPECT_EQ(where.size(), 1u) << speaker;
}

TEST(TextDatasetTest, SpeakerPartitionGivesTheLargestCharacterToTheLeastLoadedPartition) {
  // Loads: A 10, B 7, C 6, D 4 characters. Greedy: A->0, B->1, C->1 (7 < 10), D->0 (10 < 13).
  const std::vector<std::string> paragraphs = {"C:\nccc", "A:\naaaaaaa", "B:\nbbbb", "D:\nd"};
  EXPECT_THAT(PartitionOrDie(paragraphs, Partitioner::kSpeaker, 2, 0),
              ElementsAre(ElementsAre(1, 3), ElementsAre(0, 2)));
}

TEST(TextDatasetTest, NonePartitionerGivesEveryPartitionTheWholeCorpus) {
  const std::vector<std::string> paragraphs = {"a", "b", "c"};
  EXPECT_THAT(PartitionOrDie(paragraphs, Partitioner::kNone, 2, 0),
              ElementsAre(ElementsAre(0, 1, 2), ElementsAre(0, 1, 2)));
}

TEST(TextDatasetTest, ParsePartitionerListsTheValidNames) {
  EXPECT_EQ(*ParsePartitioner("speaker"), Partitioner::kSpeaker);
  const Result<Partitioner> bad = ParsePartitioner("random");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("none, iid, contiguous, speaker"));
}

TEST(TextDatasetTest, HeldoutSplitIsDisjointSeededAndKeepsBothSidesNonEmpty) {
  std::vector<std::size_t> mine(100);
  std::iota(mine.begin(), mine.end(), std::size_t{1000});
  const HeldoutSplit split = SplitHeldout(mine, 0.1, 5);
  EXPECT_EQ(split.heldout.size(), 10u);
  EXPECT_EQ(split.train.size(), 90u);
  std::vector<std::size_t> all = split.train;
  all.insert(all.end(), split.heldout.begin(), split.heldout.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, mine);
  EXPECT_EQ(SplitHeldout(mine, 0.1, 5).heldout, split.heldout);
  EXPECT_NE(SplitHeldout(mine, 0.1, 6).heldout, split.heldout);

  const std::vector<std::size_t> few = {1, 2, 3};
  EXPECT_EQ(SplitHeldout(few, 0.01, 0).heldout.size(), 1u);  // Rounds to 0, kept at 1.
  EXPECT_EQ(SplitHeldout(few, 0.99, 0).train.size(), 1u);    // Rounds to 3, kept at 2.
  EXPECT_TRUE(SplitHeldout(few, 0.0, 0).heldout.empty());
  const std::vector<std::size_t> one = {4};
  EXPECT_THAT(SplitHeldout(one, 0.5, 0).train, ElementsAre(4));
}

TEST(TextDatasetTest, MakeWindowsCutsNonOverlappingChunksAndDropsTheTail) {
  EXPECT_THAT(MakeWindows(10, 4), ElementsAre(TokenWindow{0, 4}, TokenWindow{4, 4}));
  EXPECT_THAT(MakeWindows(8, 4), ElementsAre(TokenWindow{0, 4}, TokenWindow{4, 4}));
  EXPECT_THAT(MakeWindows(3, 4), ElementsAre(TokenWindow{0, 3}));  // Short stream: one window.
  EXPECT_TRUE(MakeWindows(0, 4).empty());
}

TEST(TextDatasetTest, DeterministicShuffleIsASeededPermutation) {
  std::vector<std::size_t> a(50), b(50);
  std::iota(a.begin(), a.end(), std::size_t{0});
  std::iota(b.begin(), b.end(), std::size_t{0});
  std::mt19937_64 r1(17), r2(17);
  DeterministicShuffle(a, r1);
  DeterministicShuffle(b, r2);
  EXPECT_EQ(a, b);
  std::vector<std::size_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted[0], 0u);
  EXPECT_EQ(sorted[49], 49u);
  EXPECT_TRUE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  EXPECT_FALSE(std::is_sorted(a.begin(), a.end()));
}

TEST(TextDatasetTest, ReadTextFileNormalisesCrLfAndRejectsInvalidUtf8WithTheOffset) {
  const std::string good = WriteTempText("crlf.txt", "A:\r\nhi\r\n\r\nB:\r\nyo\r\n");
  EXPECT_EQ(*ReadTextFile(good), "A:\nhi\n\nB:\nyo\n");
  const std::string bad = WriteTempText("bad_utf8.txt", "abc\xC3(def");
  const Result<std::string> r = ReadTextFile(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(bad));
  EXPECT_THAT(r.status().message(), HasSubstr("byte 3"));
  EXPECT_FALSE(ReadTextFile(WriteTempText("overlong.txt", "\xC0\xAF")).ok());
  EXPECT_FALSE(ReadTextFile(WriteTempText("surrogate.txt", "\xED\xA0\x80")).ok());
  EXPECT_TRUE(ReadTextFile(WriteTempText("utf8.txt", "caf\xC3\xA9 \xF0\x9F\x98\x80")).ok());
}

class ClientDataTest : public ::testing::Test {
 protected:
  static Tokenizer LoadTokenizer() { return std::move(Tokenizer::Load(TokenizerPath(), 512)).value(); }
  static DataConfig SpeakerConfig(std::uint32_t index) {
    DataConfig c;
    c.path = ShakespearePath();
    c.partition = "speaker";
    c.num_partitions = 4;
    c.partition_index = index;
    c.partition_seed = 3;
    c.heldout_fraction = 0.1;
    return c;
  }
};

TEST_F(ClientDataTest, LoadsTokenizedTrainAndHeldoutStreamsOfOnePartition) {
  const Tokenizer tok = LoadTokenizer();
  const Result<ClientData> data = LoadClientData(SpeakerConfig(1), tok);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_GT(data->train.size(), 10'000u);
  EXPECT_GT(data->heldout.size(), 1'000u);
  const double share = double(data->heldout_paragraphs) /
                       double(data->heldout_paragraphs + data->train_paragraphs);
  EXPECT_NEAR(share, 0.1, 0.01);
  const Result<ClientData> again = LoadClientData(SpeakerConfig(1), tok);
  EXPECT_EQ(again->train, data->train);
  EXPECT_EQ(again->heldout, data->heldout);
  EXPECT_NE(LoadClientData(SpeakerConfig(2), tok)->train, data->train);
}

TEST_F(ClientDataTest, RejectsBadConfigValuesNamingTheKey) {
  const Tokenizer tok = LoadTokenizer();
  DataConfig c = SpeakerConfig(4);
  EXPECT_THAT(LoadClientData(c, tok).status().message(), HasSubstr("data.partition_index"));
  c = SpeakerConfig(0);
  c.partition = "by_play";
  EXPECT_THAT(LoadClientData(c, tok).status().message(), HasSubstr("data.partition"));
  c = SpeakerConfig(0);
  c.heldout_fraction = 1.0;
  EXPECT_THAT(LoadClientData(c, tok).status().message(), HasSubstr("data.heldout_fraction"));
  c = SpeakerConfig(0);
  c.path = "/nonexistent/corpus.txt";
  const Status missing = LoadClientData(c, tok).status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("/nonexistent/corpus.txt"));
}

TEST_F(ClientDataTest, AnEmptyPartitionIsAFailedPrecondition) {
  const Tokenizer tok = LoadTokenizer();
  DataConfig c;
  c.path = WriteTempText("two_speakers.txt", "A:\nx\n\nB:\ny\n");
  c.partition = "speaker";
  c.num_partitions = 3;
  c.partition_index = 2;
  EXPECT_EQ(LoadClientData(c, tok).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fedlora::client
