#include "client/data/examples.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

#include "client/data/text_dataset.h"
#include "client/model/tokenizer.h"
#include "common/config/yaml_config.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing_assets::TokenizerPath;

using testing_assets::DatasetPath;

const Tokenizer& Tok512() {
  static const Tokenizer tokenizer = [] {
    Result<Tokenizer> t = Tokenizer::Load(TokenizerPath(), 512);
    FEDLORA_CHECK(t.ok());
    return std::move(t).value();
  }();
  return tokenizer;
}

std::string WriteTemp(const std::string& name, std::string_view bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::string Gzip(std::string_view bytes) {
  uLongf size = compressBound(static_cast<uLong>(bytes.size())) + 32;
  std::string out(size, '\0');
  z_stream s{};
  FEDLORA_CHECK(deflateInit2(&s, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  s.avail_in = static_cast<uInt>(bytes.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  FEDLORA_CHECK(deflate(&s, Z_FINISH) == Z_STREAM_END);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

Status LoadStatus(RecordFormat format, const std::string& name, std::string_view content) {
  return LoadRecords(format, WriteTemp(name, content)).status();
}

std::vector<TokenId> Slice(const std::vector<TokenId>& v, std::size_t begin, std::size_t end) {
  return std::vector<TokenId>(v.begin() + static_cast<std::ptrdiff_t>(begin),
                              v.begin() + static_cast<std::ptrdiff_t>(end));
}

// ---- Loaders on the real datasets -----------------------------------------------------------

TEST(RecordSourcesTest, Sst2TrainRowsBecomeTrimmedSentencesWithTheirLabels) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  const Result<std::vector<Record>> r = LoadSst2Tsv(DatasetPath("sst2/train.tsv"), {.limit = 4});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0].input, "when are bears bears and");
  EXPECT_EQ((*r)[0].label, 1);
  EXPECT_EQ((*r)[0].line, 2u);  // Line 1 is the header.
  EXPECT_EQ((*r)[3].input, "has so many flaws it would be easy for critics to shred it");
  EXPECT_EQ((*r)[3].label, 0);
}

TEST(RecordSourcesTest, Sst2TestFileHasTheDocumentedLabelCounts) {
  FEDLORA_REQUIRE_DATASET("sst2/test.tsv");
  const Result<std::vector<Record>> r = LoadSst2Tsv(DatasetPath("sst2/test.tsv"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto positives =
      std::count_if(r->begin(), r->end(), [](const Record& x) { return x.label == 1; });
  EXPECT_EQ(r->size(), 872u);
  EXPECT_EQ(positives, 444);
}

TEST(RecordSourcesTest, Gsm8kStripsCalculatorAnnotationsAndExtractsTheFinalAnswer) {
  FEDLORA_REQUIRE_DATASET("gsm8k/train.jsonl");
  const Result<std::vector<Record>> r = LoadGsm8kJsonl(DatasetPath("gsm8k/train.jsonl"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 7473u);
  const Record& first = (*r)[0];
  EXPECT_THAT(first.instruction, StartsWith("Natalia sold clips to 48 of her friends"));
  EXPECT_EQ(first.response,
            "Natalia sold 48/2 = 24 clips in May.\n"
            "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72");
  EXPECT_EQ(first.answer, "72");
  EXPECT_EQ((*r)[345].answer, "1080");  // "#### 1,080" on line 346.
  for (const Record& x : *r) {
    ASSERT_EQ(x.response.find("<<"), std::string::npos) << "line " << x.line;
    ASSERT_EQ(ExtractFinalAnswer(x.response), x.answer) << "line " << x.line;
  }
}

TEST(RecordSourcesTest, SpamAssassinHasItsDocumentedGroupsAndLabelsAndShortTexts) {
  FEDLORA_REQUIRE_DATASET("spamassassin/spamassassin.jsonl.gz");
  const Result<std::vector<Record>> r = LoadSpamAssassinJsonl(
      DatasetPath("spamassassin/spamassassin.jsonl.gz"), {.limit = 0, .max_text_chars = 300});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 6046u);
  std::map<std::string, std::pair<std::size_t, std::int32_t>> groups;  // size, label
  for (const Record& x : *r) {
    groups[x.group].first++;
    groups[x.group].second = x.label;
    ASSERT_THAT(x.input, StartsWith("Subject: "));
    ASSERT_LE(x.input.size(), 300u * 4);
    ASSERT_EQ(FirstInvalidUtf8(x.input), std::string::npos);
  }
  using G = std::pair<std::size_t, std::int32_t>;
  EXPECT_THAT(groups, ElementsAre(std::pair<const std::string, G>{"easy-ham-1", {2500, 0}},
                                  std::pair<const std::string, G>{"easy-ham-2", {1400, 0}},
                                  std::pair<const std::string, G>{"hard-ham-1", {250, 0}},
                                  std::pair<const std::string, G>{"spam-1", {500, 1}},
                                  std::pair<const std::string, G>{"spam-2", {1396, 1}}));
}

TEST(RecordSourcesTest, EmailsKeepTheirSubjectAndTheStartOfTheirBodyOnly) {
  const std::string mail =
      "From x@y  Thu Aug 22\nReceived: from a\n\tby b\nSubject: Re: New\n  Sequences Window\n"
      "X-Spam: no\n\nHello   there,\n\n  the body\tcontinues.\n";
  EXPECT_EQ(CleanEmailText(mail, 0),
            "Subject: Re: New Sequences Window\nHello there, the body "
            "continues.");
  EXPECT_EQ(CleanEmailText(mail, 40), "Subject: Re: New Sequences Window\nHello ");
  EXPECT_EQ(CleanEmailText("To: a\n\nbody", 0), "Subject: \nbody");
  EXPECT_EQ(TruncateCodePoints("h\xC3\xA9llo", 2), "h\xC3\xA9");
}

TEST(RecordSourcesTest, AnswersAreNormalisedAndFoundAfterHashesOrAsTheLastNumber) {
  EXPECT_EQ(NormalizeAnswer(" 1,000 "), "1000");
  EXPECT_EQ(NormalizeAnswer("$18."), "18");
  EXPECT_EQ(NormalizeAnswer("10.50"), "10.5");
  EXPECT_EQ(NormalizeAnswer("3.0"), "3");
  EXPECT_EQ(NormalizeAnswer("-4"), "-4");
  EXPECT_EQ(NormalizeAnswer("+7"), "7");
  EXPECT_EQ(NormalizeAnswer("7 apples"), "7 apples");
  EXPECT_EQ(ExtractFinalAnswer("so 3 + 4 = 7\n#### 7\n"), "7");
  EXPECT_EQ(ExtractFinalAnswer("She pays $1,250.00 in all."), "1250");
  EXPECT_EQ(ExtractFinalAnswer("It drops to -3 degrees"), "-3");
  EXPECT_EQ(ExtractFinalAnswer("no number here"), "");
}

// ---- Malformed input ------------------------------------------------------------------------

TEST(RecordSourcesTest, ABadJsonLineIsAnErrorNamingTheFileAndLine) {
  const Status s =
      LoadStatus(RecordFormat::kAlpaca, "bad.jsonl",
                 "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("bad.jsonl:3:"));
  EXPECT_THAT(LoadStatus(RecordFormat::kAlpaca, "array.json", "[{\"instruction\": 1}]").message(),
              HasSubstr("JSON Lines"));
}

TEST(RecordSourcesTest, AMissingOrMistypedKeyIsNamed) {
  EXPECT_THAT(
      LoadStatus(RecordFormat::kAlpaca, "nokey.jsonl", "{\"instruction\": \"a\"}\n").message(),
      HasSubstr("nokey.jsonl:1: key 'output': missing"));
  EXPECT_THAT(
      LoadStatus(RecordFormat::kGsm8k, "type.jsonl", "{\"question\": \"q\", \"answer\": 5}\n")
          .message(),
      HasSubstr("type.jsonl:1: key 'answer': expected a string"));
  EXPECT_THAT(
      LoadStatus(RecordFormat::kGsm8k, "nohash.jsonl", "{\"question\": \"q\", \"answer\": \"5\"}\n")
          .message(),
      HasSubstr("key 'answer': no '####"));
  EXPECT_THAT(LoadStatus(RecordFormat::kChat, "role.jsonl",
                         "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n")
                  .message(),
              HasSubstr("role.jsonl:1: key 'messages[0].role': unknown role 'bot'"));
  EXPECT_THAT(LoadStatus(RecordFormat::kChat, "noassistant.jsonl",
                         "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n")
                  .message(),
              HasSubstr("no assistant turn"));
}

TEST(RecordSourcesTest, AnUnknownLabelIsAnErrorNamingTheLine) {
  EXPECT_THAT(LoadStatus(RecordFormat::kSst2, "label.tsv", "sentence\tlabel\ngood \t1\nmeh \t2\n")
                  .message(),
              HasSubstr("label.tsv:3: column 'label': unknown label '2'"));
  EXPECT_THAT(LoadStatus(RecordFormat::kSst2, "header.tsv", "text\tlabel\n").message(),
              HasSubstr("header.tsv:1: expected the header"));
  EXPECT_THAT(
      LoadStatus(RecordFormat::kSpamAssassin, "spam.jsonl",
                 "{\"group\": \"g\", \"label\": \"eggs\", \"id\": \"1\", \"text\": \"t\"}\n")
          .message(),
      HasSubstr("spam.jsonl:1: key 'label': unknown label 'eggs'"));
}

TEST(RecordSourcesTest, ATruncatedGzipFileIsDataLoss) {
  std::string lines;
  for (int i = 0; i < 2000; ++i) {
    lines += StrCat("{\"group\": \"g\", \"label\": \"ham\", \"id\": \"", i,
                    "\", \"text\": \"Subject: number ", i, "\\n\\nbody ", i * 7919, "\"}\n");
  }
  const std::string gz = Gzip(lines);
  const std::string whole = WriteTemp("whole.jsonl.gz", gz);
  const Result<std::vector<Record>> ok = LoadSpamAssassinJsonl(whole);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->size(), 2000u);

  const std::string cut = WriteTemp("cut.jsonl.gz", std::string_view(gz).substr(0, gz.size() / 2));
  const Status s = LoadSpamAssassinJsonl(cut).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("cut.jsonl.gz"));
  EXPECT_EQ(LoadSpamAssassinJsonl(::testing::TempDir() + "absent.gz").status().code(),
            StatusCode::kNotFound);
}

// ---- Examples -------------------------------------------------------------------------------

TEST(ExamplesTest, TheLossMaskCoversExactlyTheResponseTokensAndEos) {
  const RenderedTurn turn{"Review: a charming journey .\nSentiment:", " positive"};
  const std::optional<Example> e = EncodeTurn(turn, Tok512(), 0);
  ASSERT_TRUE(e.has_value());
  const std::vector<TokenId> prompt = Tok512().Encode(turn.prompt, true, false);
  ASSERT_EQ(e->prompt_len, prompt.size());
  EXPECT_EQ(Slice(e->tokens, 0, e->prompt_len), prompt);
  EXPECT_EQ(e->tokens.back(), Tokenizer::kEos);
  const std::vector<TokenId> response = Slice(e->tokens, e->prompt_len, e->tokens.size() - 1);
  EXPECT_EQ(Tok512().Decode(response), " positive");  // No doubled dummy-prefix space.
  EXPECT_EQ(Tok512().Decode(e->tokens), turn.prompt + turn.response);
  EXPECT_EQ(e->num_targets(), response.size() + 1);
}

TEST(ExamplesTest, LongPromptsLoseTokensFromTheirLeftAndResponsesStayWhole) {
  const RenderedTurn turn{"Once upon a time there was a very long prompt. ### Response:\n",
                          "The end."};
  const Example full = EncodeTurn(turn, Tok512(), 0).value();
  const std::size_t response_len = full.num_targets();
  const std::size_t max_tokens = response_len + 5;
  const std::optional<Example> cut = EncodeTurn(turn, Tok512(), max_tokens);
  ASSERT_TRUE(cut.has_value());
  EXPECT_TRUE(cut->truncated);
  EXPECT_EQ(cut->tokens.size(), max_tokens);
  EXPECT_EQ(cut->tokens[0], Tokenizer::kBos);
  EXPECT_EQ(cut->prompt_len, 5u);
  // BOS, then the last four prompt tokens, then the untouched response.
  EXPECT_EQ(Slice(cut->tokens, 1, cut->tokens.size()),
            Slice(full.tokens, full.prompt_len - 4, full.tokens.size()));
  EXPECT_FALSE(EncodeTurn(turn, Tok512(), response_len + 1).has_value());  // Only BOS would fit.
  EXPECT_TRUE(EncodeTurn(turn, Tok512(), response_len + 2).has_value());
}

TEST(ExamplesTest, LabelSetsHaveDistinctFirstTokensAndPredictTheirArgmax) {
  const std::vector<std::string> words = {" negative", " positive"};
  const Result<LabelSet> set = MakeLabelSet(words, Tok512());
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_NE(set->first_tokens[0], set->first_tokens[1]);
  EXPECT_EQ(Tok512().Decode(set->tokens[1]), " positive");
  std::vector<float> logits(512, 0.0f);
  logits[static_cast<std::size_t>(set->first_tokens[1])] = 2.0f;
  EXPECT_EQ(set->Predict(logits), 1);
  logits[static_cast<std::size_t>(set->first_tokens[0])] = 3.0f;
  EXPECT_EQ(set->Predict(logits), 0);
}

TEST(ExamplesTest, LabelWordsThatShareAFirstTokenAreRejectedByName) {
  const std::vector<std::string> words = {" yes", " yes indeed"};
  const Status s = MakeLabelSet(words, Tok512()).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("' yes' and ' yes indeed' share their first token"));
}

TEST(ExamplesTest, PaddedBatchesShiftTargetsAndWeighOnlyResponseTokens) {
  std::vector<Example> examples(2);
  examples[0].tokens = {1, 10, 11, 12, 2};
  examples[0].prompt_len = 3;
  examples[0].label = 1;
  examples[1].tokens = {1, 20, 2};
  examples[1].prompt_len = 2;
  const std::vector<std::size_t> which = {0, 1};
  const PaddedBatch b = MakePaddedBatch(examples, which, 0);
  EXPECT_EQ(b.rows, 2u);
  EXPECT_EQ(b.cols, 4u);
  EXPECT_THAT(b.inputs, ElementsAre(1, 10, 11, 12, /**/ 1, 20, 0, 0));
  EXPECT_THAT(b.targets, ElementsAre(10, 11, 12, 2, /**/ 20, 2, 0, 0));
  EXPECT_THAT(b.loss_weights, ElementsAre(0, 0, 1, 1, /**/ 0, 1, 0, 0));
  EXPECT_THAT(b.prompt_ends, ElementsAre(2, 1));
  EXPECT_THAT(b.labels, ElementsAre(1, -1));
}

// ---- One client's examples ------------------------------------------------------------------

DataConfig Sst2Config(std::uint32_t index) {
  DataConfig c;
  c.path = DatasetPath("sst2/train.tsv");
  c.format = "sst2";
  c.partition = "dirichlet";
  c.dirichlet_alpha = 0.5;
  c.num_partitions = 8;
  c.partition_index = index;
  c.partition_seed = 42;
  c.max_records = 4000;
  c.heldout_fraction = 0.1;
  return c;
}

TEST(ClientExamplesTest, Sst2ClientsSplitTheSampleAndEveryExampleEndsInItsLabelWord) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  std::size_t records = 0;
  for (std::uint32_t i = 0; i < 8; ++i) {
    const Result<ClientExamples> data = LoadClientExamples(Sst2Config(i), Tok512());
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    const ClientExampleStats& s = data->stats;
    EXPECT_EQ(s.file_records, 4000u);
    EXPECT_EQ(s.train_records + s.heldout_records, s.partition_records);
    EXPECT_EQ(data->train.size(), s.train_records);  // One example per record, none dropped.
    EXPECT_EQ(s.train_label_histogram[0] + s.train_label_histogram[1], s.train_records);
    records += s.partition_records;
    for (const Example& e : data->train) {
      ASSERT_EQ(e.tokens[e.prompt_len], data->labels.first_tokens[e.label]);
    }
  }
  EXPECT_EQ(records, 4000u);  // Disjoint and covering.
}

TEST(ClientExamplesTest, LoadingTwiceGivesTheSameExamples) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  const Result<ClientExamples> a = LoadClientExamples(Sst2Config(3), Tok512());
  const Result<ClientExamples> b = LoadClientExamples(Sst2Config(3), Tok512());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->train, b->train);
  EXPECT_EQ(a->heldout, b->heldout);
}

TEST(ClientExamplesTest, AnEvalPathReplacesTheHeldOutShareWithTheSharedTestFile) {
  FEDLORA_REQUIRE_DATASET("sst2/test.tsv");
  DataConfig c = Sst2Config(0);
  c.eval_path = DatasetPath("sst2/test.tsv");
  c.heldout_fraction = 0;
  const Result<ClientExamples> data = LoadClientExamples(c, Tok512());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->stats.train_records, data->stats.partition_records);
  EXPECT_EQ(data->heldout.size(), 872u);
  EXPECT_THAT(data->stats.heldout_label_histogram, ElementsAre(428, 444));
  EXPECT_THAT(data->Summary(c), HasSubstr("(eval_path)"));
}

TEST(ClientExamplesTest, Gsm8kExamplesCarryTheirAnswerAndRespectMaxTokens) {
  FEDLORA_REQUIRE_DATASET("gsm8k/test.jsonl");
  DataConfig c;
  c.path = DatasetPath("gsm8k/test.jsonl");
  c.format = "gsm8k";
  c.partition = "iid";
  c.num_partitions = 4;
  c.partition_index = 1;
  c.max_records = 200;
  c.max_tokens = 256;
  const Result<ClientExamples> data = LoadClientExamples(c, Tok512());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->prompt_template.kind, TemplateKind::kAlpaca);
  EXPECT_EQ(data->stats.partition_records, 50u);
  for (const Example& e : data->train) {
    EXPECT_LE(e.tokens.size(), 256u);
    EXPECT_FALSE(e.answer.empty());
    const std::vector<TokenId> response(
        e.tokens.begin() + static_cast<std::ptrdiff_t>(e.prompt_len), e.tokens.end());
    EXPECT_EQ(ExtractFinalAnswer(Tok512().Decode(response)), e.answer);
  }
}

TEST(ClientExamplesTest, ChatRecordsGiveOneExamplePerAssistantTurn) {
  const std::string path = WriteTemp(
      "chat.jsonl",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", "
      "\"content\": \"Hello.\"}, {\"role\": \"user\", \"content\": \"Bye\"}, {\"role\": "
      "\"assistant\", \"content\": \"Bye.\"}]}\n");
  DataConfig c;
  c.path = path;
  c.format = "chat";
  c.heldout_fraction = 0.1;  // One record: it stays in training.
  const Result<ClientExamples> data = LoadClientExamples(c, Tok512());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ASSERT_EQ(data->train.size(), 2u);
  const Example& second = data->train[1];
  EXPECT_EQ(Tok512().Decode(Slice(second.tokens, second.prompt_len, second.tokens.size())),
            "Bye.<|im_end|>");
}

TEST(ClientExamplesTest, BadConfigurationsNameTheirKey) {
  FEDLORA_REQUIRE_DATASET("sst2/train.tsv");
  DataConfig c = Sst2Config(0);
  c.template_name = "alpaca";
  EXPECT_THAT(LoadClientExamples(c, Tok512()).status().message(), HasSubstr("data.template"));
  c = Sst2Config(0);
  c.label_words = {" good", " bad", " ugly"};
  EXPECT_THAT(LoadClientExamples(c, Tok512()).status().message(), HasSubstr("data.label_words"));
  c = Sst2Config(0);
  c.partition = "speaker";
  EXPECT_THAT(LoadClientExamples(c, Tok512()).status().message(), HasSubstr("data.partition"));
  c = Sst2Config(0);
  c.format = "csv";
  EXPECT_THAT(LoadClientExamples(c, Tok512()).status().message(), HasSubstr("data.format"));
  c = Sst2Config(0);
  c.eval_path = ::testing::TempDir() + "absent.tsv";
  EXPECT_EQ(LoadClientExamples(c, Tok512()).status().code(), StatusCode::kNotFound);
}

// ---- The data keys of the client configuration ------------------------------------------------

Result<ClientConfig> ParseData(std::string_view data_yaml) {
  FEDLORA_ASSIGN_OR_RETURN(
      config::ConfigDocument doc,
      config::ConfigDocument::Parse(
          StrCat("model: {path: m.bin, tokenizer: t.bin}\ndata:\n", data_yaml), "client.yaml"));
  ClientConfig config;
  FEDLORA_RETURN_IF_ERROR(ParseClientConfig(doc.Root(), &config));
  return config;
}

TEST(DataConfigTest, RecordKeysAreReadWithTheirValues) {
  const Result<ClientConfig> c = ParseData(
      "  path: train.tsv\n  format: sst2\n  template: classify\n  partition: dirichlet\n"
      "  dirichlet_alpha: 0.1\n  max_tokens: 128\n  max_records: 500\n"
      "  label_words: [' bad', ' good']\n  eval_path: test.tsv\n  heldout_fraction: 0\n"
      "  max_text_chars: 200\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->data.template_name, "classify");
  EXPECT_EQ(c->data.dirichlet_alpha, 0.1);
  EXPECT_EQ(c->data.max_tokens, 128u);
  EXPECT_EQ(c->data.max_records, 500u);
  EXPECT_THAT(c->data.label_words, ElementsAre(" bad", " good"));
  EXPECT_EQ(c->data.eval_path, "test.tsv");
  EXPECT_EQ(c->data.max_text_chars, 200u);
}

TEST(DataConfigTest, BadRecordValuesNameTheirKey) {
  const auto message = [](std::string_view yaml) {
    const Result<ClientConfig> c = ParseData(StrCat("  path: x\n", yaml));
    return c.ok() ? std::string("ok") : c.status().message();
  };
  EXPECT_THAT(message("  format: csv\n"), HasSubstr("data.format"));
  EXPECT_THAT(message("  format: sst2\n  template: vicuna\n"), HasSubstr("data.template"));
  EXPECT_THAT(message("  format: sst2\n  partition: speaker\n"), HasSubstr("data.partition"));
  EXPECT_THAT(message("  partition: dirichlet\n"), HasSubstr("data.partition"));  // text
  EXPECT_THAT(message("  format: sst2\n  dirichlet_alpha: 0\n"), HasSubstr("dirichlet_alpha"));
  EXPECT_THAT(message("  template: alpaca\n"), HasSubstr("data.template"));  // text
  EXPECT_THAT(message("  format: sst2\n  heldout_fraction: 0\n"), HasSubstr("heldout_fraction"));
  EXPECT_THAT(message("  format: sst2\n  max_tokenz: 3\n"), HasSubstr("max_tokenz"));
  EXPECT_EQ(message("  format: gsm8k\n  partition: quantity\n"), "ok");
}

}  // namespace
}  // namespace fedlora::client
