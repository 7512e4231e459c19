#include "client/data/corpus_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "client/data/examples.h"
#include "client/model/tokenizer.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::HasSubstr;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerPath;

DataConfig Shakespeare(const std::string& partition, std::uint32_t partitions,
                       std::uint32_t index) {
  DataConfig c;
  c.path = ShakespearePath();
  c.partition = partition;
  c.num_partitions = partitions;
  c.partition_index = index;
  c.partition_seed = 7;
  c.heldout_fraction = 0.1;
  if (partition == "sample") c.sample_paragraphs = 6;
  return c;
}

// 100,000 clients from tinyshakespeare's ~7,000 speaker turns: every share is non-empty with the
// sample partitioner, of exactly sample_paragraphs distinct paragraphs, the same every time.
TEST(SamplePartitionTest, EveryOfAHundredThousandClientsGetsItsOwnDraw) {
  const Result<std::shared_ptr<const PartitionedText>> text =
      PartitionedText::Load(Shakespeare("sample", 100000, 0));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const std::size_t n = (*text)->paragraphs().size();
  ASSERT_GT(n, 5000u);
  std::set<std::vector<std::size_t>> distinct;
  for (std::uint32_t i = 0; i < 100000; i += 997) {
    const std::vector<std::size_t> share = (*text)->Share(i);
    ASSERT_EQ(share.size(), 6u) << i;
    EXPECT_TRUE(std::is_sorted(share.begin(), share.end()));
    EXPECT_EQ(std::set<std::size_t>(share.begin(), share.end()).size(), 6u);
    EXPECT_LT(share.back(), n);
    EXPECT_EQ((*text)->Share(i), share);
    distinct.insert(share);
  }
  EXPECT_EQ(distinct.size(), (100000 + 996) / 997u);  // Draws of different clients differ.
  EXPECT_EQ((*text)->Share(99999).size(), 6u);
}

TEST(SamplePartitionTest, ASampleLargerThanTheCorpusIsTheWholeCorpus) {
  EXPECT_EQ(SampleShare(5, 9, 1, 0), (std::vector<std::size_t>{0, 1, 2, 3, 4}));
  const std::vector<std::size_t> most = SampleShare(10, 8, 1, 3);
  EXPECT_EQ(most.size(), 8u);
  EXPECT_EQ(std::set<std::size_t>(most.begin(), most.end()).size(), 8u);
  EXPECT_TRUE(SampleShare(0, 3, 1, 0).empty());
}

TEST(SamplePartitionTest, TheSamplePartitionerNeedsASampleSize) {
  DataConfig c = Shakespeare("sample", 10, 0);
  c.sample_paragraphs = 0;
  const Result<std::shared_ptr<const PartitionedText>> text = PartitionedText::Load(c);
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("data.sample_paragraphs"));
}

// The cache reads and partitions a corpus once for every client of one partitioning, and each
// client's data is exactly what loading it alone gives.
TEST(CorpusCacheTest, ReadsACorpusOncePerPartitioningAndGivesEachClientItsOwnData) {
  const Tokenizer tok = std::move(Tokenizer::Load(TokenizerPath(), 512)).value();
  CorpusCache cache;
  for (const std::string partition : {"iid", "speaker", "sample"}) {
    SCOPED_TRACE(partition);
    for (std::uint32_t i : {0u, 3u, 7u}) {
      const DataConfig c = Shakespeare(partition, 8, i);
      const Result<ClientData> cached = LoadClientData(c, tok, &cache);
      const Result<ClientData> alone = LoadClientData(c, tok);
      ASSERT_TRUE(cached.ok()) << cached.status().ToString();
      ASSERT_TRUE(alone.ok()) << alone.status().ToString();
      EXPECT_EQ(cached->train, alone->train);
      EXPECT_EQ(cached->heldout, alone->heldout);
      EXPECT_EQ(cached->train_paragraphs, alone->train_paragraphs);
    }
  }
  EXPECT_EQ(cache.reads(), 3u);  // One per partitioning, not one per client.
}

// Record formats too: the file is read and partitioned once, and each client's examples are
// exactly those it would load alone.
TEST(CorpusCacheTest, RecordFormatsAreReadOncePerPartitioningToo) {
  const std::string path = ::testing::TempDir() + "/corpus_cache_alpaca.jsonl";
  {
    std::ofstream file(path);
    for (int i = 0; i < 40; ++i) {
      file << R"({"instruction": "Say )" << i << R"(.", "output": "Once upon a time )" << i
           << R"(."})"
           << "\n";
    }
  }
  const Tokenizer tok = std::move(Tokenizer::Load(TokenizerPath(), 512)).value();
  CorpusCache cache;
  for (std::uint32_t i = 0; i < 5; ++i) {
    DataConfig c;
    c.format = "alpaca";
    c.path = path;
    c.partition = "iid";
    c.num_partitions = 5;
    c.partition_index = i;
    c.partition_seed = 3;
    c.heldout_fraction = 0.25;
    const Result<ClientExamples> cached = LoadClientExamples(c, tok, &cache);
    const Result<ClientExamples> alone = LoadClientExamples(c, tok);
    ASSERT_TRUE(cached.ok()) << cached.status().ToString();
    ASSERT_TRUE(alone.ok()) << alone.status().ToString();
    ASSERT_EQ(cached->train.size(), alone->train.size());
    for (std::size_t k = 0; k < alone->train.size(); ++k) {
      EXPECT_EQ(cached->train[k].tokens, alone->train[k].tokens);
    }
    EXPECT_EQ(cached->heldout.size(), alone->heldout.size());
  }
  EXPECT_EQ(cache.reads(), 1u);
  std::filesystem::remove(path);
}

TEST(CorpusCacheTest, ThreadsSharingTheCacheGetOneCopy) {
  CorpusCache cache;
  std::vector<std::shared_ptr<const PartitionedText>> seen(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < seen.size(); ++t) {
    threads.emplace_back([&, t] { seen[t] = cache.Text(Shakespeare("iid", 100, 0)).value(); });
  }
  for (std::thread& t : threads) t.join();
  for (const auto& text : seen) EXPECT_EQ(text.get(), seen.front().get());
  EXPECT_EQ(cache.reads(), 1u);
}

TEST(CorpusCacheTest, AMissingFileIsAnErrorNamingItAndIsNotCached) {
  CorpusCache cache;
  DataConfig c = Shakespeare("iid", 2, 0);
  c.path = "/nonexistent/corpus.txt";
  const Result<std::shared_ptr<const PartitionedText>> text = cache.Text(c);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(text.status().message(), HasSubstr("/nonexistent/corpus.txt"));
  EXPECT_EQ(cache.reads(), 0u);
  EXPECT_FALSE(cache.Paragraphs("/nonexistent/init.txt").ok());
}

}  // namespace
}  // namespace fedlora::client
