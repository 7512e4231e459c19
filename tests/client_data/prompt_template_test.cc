#include "client/data/prompt_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Record Alpaca(std::string instruction, std::string input, std::string output) {
  Record r;
  r.instruction = std::move(instruction);
  r.input = std::move(input);
  r.response = std::move(output);
  r.line = 7;
  return r;
}

std::vector<RenderedTurn> RenderOrDie(const PromptTemplate& tmpl, const Record& record) {
  Result<std::vector<RenderedTurn>> turns = RenderRecord(tmpl, record);
  EXPECT_TRUE(turns.ok()) << turns.status().ToString();
  return turns.ok() ? std::move(turns).value() : std::vector<RenderedTurn>{};
}

TEST(PromptTemplateTest, AlpacaWithoutInputIsTheStanfordPrompt) {
  const auto turns = RenderOrDie({TemplateKind::kAlpaca, {}}, Alpaca("Say hi.", "", "Hi!"));
  EXPECT_THAT(turns, ElementsAre(RenderedTurn{
                         "Below is an instruction that describes a task. Write a response that "
                         "appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n"
                         "### Response:\n",
                         "Hi!"}));
}

TEST(PromptTemplateTest, AlpacaWithInputIsTheStanfordPromptWithItsInputSection) {
  const auto turns = RenderOrDie({TemplateKind::kAlpaca, {}}, Alpaca("Add them.", "2 and 3", "5"));
  EXPECT_THAT(turns, ElementsAre(RenderedTurn{
                         "Below is an instruction that describes a task, paired with an input "
                         "that provides further context. Write a response that appropriately "
                         "completes the request.\n\n### Instruction:\nAdd them.\n\n### Input:\n"
                         "2 and 3\n\n### Response:\n",
                         "5"}));
}

TEST(PromptTemplateTest, ChatmlGivesOneTurnPerAssistantMessageWithTheWholeHistoryAsPrompt) {
  Record r;
  r.messages = {{ChatRole::kSystem, "Be brief."},
                {ChatRole::kUser, "Hi"},
                {ChatRole::kAssistant, "Hello."},
                {ChatRole::kUser, "Bye"},
                {ChatRole::kAssistant, "Bye."}};
  const auto turns = RenderOrDie({TemplateKind::kChatml, {}}, r);
  const std::string first =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
  EXPECT_THAT(turns,
              ElementsAre(RenderedTurn{first + "<|im_start|>assistant\n", "Hello.<|im_end|>"},
                          RenderedTurn{first + "<|im_start|>assistant\nHello.<|im_end|>\n"
                                               "<|im_start|>user\nBye<|im_end|>\n"
                                               "<|im_start|>assistant\n",
                                       "Bye.<|im_end|>"}));
}

TEST(PromptTemplateTest, ChatmlTurnsAnInstructionRecordIntoOneUserAndAssistantExchange) {
  const auto turns = RenderOrDie({TemplateKind::kChatml, {}}, Alpaca("Add them.", "2 and 3", "5"));
  EXPECT_THAT(turns, ElementsAre(RenderedTurn{"<|im_start|>user\nAdd them.\n\n2 and 3<|im_end|>\n"
                                              "<|im_start|>assistant\n",
                                              "5<|im_end|>"}));
}

TEST(PromptTemplateTest, PlainJoinsInstructionAndInputByNewlines) {
  EXPECT_THAT(RenderOrDie({TemplateKind::kPlain, {}}, Alpaca("Q?", "", "A.")),
              ElementsAre(RenderedTurn{"Q?\n", "A."}));
  EXPECT_THAT(RenderOrDie({TemplateKind::kPlain, {}}, Alpaca("Q?", "ctx", "A.")),
              ElementsAre(RenderedTurn{"Q?\nctx\n", "A."}));
}

TEST(PromptTemplateTest, ClassifyVerbalisesTheLabelWithTheFormatsDefaultWords) {
  Record review;
  review.input = "a charming journey .";
  review.label = 1;
  const PromptTemplate sst2{TemplateKind::kClassify,
                            DefaultClassificationTemplate(RecordFormat::kSst2)};
  EXPECT_THAT(RenderOrDie(sst2, review),
              ElementsAre(RenderedTurn{"Review: a charming journey .\nSentiment:", " positive"}));
  review.label = 0;
  EXPECT_EQ(RenderOrDie(sst2, review)[0].response, " negative");

  Record mail;
  mail.input = "Subject: hi\nbody";
  mail.label = 1;
  const PromptTemplate spam{TemplateKind::kClassify,
                            DefaultClassificationTemplate(RecordFormat::kSpamAssassin)};
  EXPECT_THAT(RenderOrDie(spam, mail),
              ElementsAre(RenderedTurn{"Email: Subject: hi\nbody\nLabel:", " spam"}));
}

TEST(PromptTemplateTest, RecordsATemplateCannotRenderAreErrorsNamingTheirLine) {
  Record chat;
  chat.messages = {{ChatRole::kUser, "Hi"}, {ChatRole::kAssistant, "Hello."}};
  chat.line = 12;
  const Status alpaca = RenderRecord({TemplateKind::kAlpaca, {}}, chat).status();
  EXPECT_EQ(alpaca.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(alpaca.message(), HasSubstr("line 12"));
  EXPECT_THAT(alpaca.message(), HasSubstr("chatml"));

  Record unlabeled = Alpaca("x", "", "y");
  const PromptTemplate sst2{TemplateKind::kClassify,
                            DefaultClassificationTemplate(RecordFormat::kSst2)};
  EXPECT_THAT(RenderRecord(sst2, unlabeled).status().message(), HasSubstr("needs a label"));
  Record three;
  three.label = 2;
  EXPECT_THAT(RenderRecord(sst2, three).status().message(), HasSubstr("no label word"));
}

TEST(PromptTemplateTest, EachFormatHasADefaultTemplateThatFitsIt) {
  for (RecordFormat f : {RecordFormat::kAlpaca, RecordFormat::kChat, RecordFormat::kGsm8k,
                         RecordFormat::kSst2, RecordFormat::kSpamAssassin}) {
    EXPECT_TRUE(CheckTemplateFits(DefaultTemplate(f), f).ok()) << RecordFormatName(f);
  }
  EXPECT_EQ(DefaultTemplate(RecordFormat::kGsm8k), TemplateKind::kAlpaca);
  EXPECT_EQ(DefaultTemplate(RecordFormat::kChat), TemplateKind::kChatml);
  EXPECT_FALSE(CheckTemplateFits(TemplateKind::kAlpaca, RecordFormat::kSst2).ok());
  EXPECT_FALSE(CheckTemplateFits(TemplateKind::kClassify, RecordFormat::kGsm8k).ok());
  EXPECT_FALSE(CheckTemplateFits(TemplateKind::kPlain, RecordFormat::kChat).ok());
}

TEST(PromptTemplateTest, TemplateNamesRoundTripAndUnknownNamesListTheChoices) {
  for (TemplateKind k : {TemplateKind::kAlpaca, TemplateKind::kChatml, TemplateKind::kPlain,
                         TemplateKind::kClassify}) {
    EXPECT_EQ(ParseTemplateKind(TemplateKindName(k)).value(), k);
  }
  EXPECT_THAT(ParseTemplateKind("vicuna").status().message(),
              HasSubstr("alpaca, chatml, plain, classify"));
}

}  // namespace
}  // namespace fedlora::client
