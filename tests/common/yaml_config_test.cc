#include "common/config/yaml_config.h"

#include <gtest/gtest.h>

namespace fedlora::config {
namespace {

struct Sample {
  std::uint32_t rounds = 10;
  double lr = 1e-3;
  std::string name = "x";
  std::vector<std::string> targets;
  bool flag = false;
};

Status ParseSample(const ConfigDocument& doc, Sample* s) {
  const ConfigSection root = doc.Root();
  FEDLORA_RETURN_IF_ERROR(root.Read("rounds", &s->rounds));
  FEDLORA_RETURN_IF_ERROR(root.Read("name", &s->name));
  FEDLORA_RETURN_IF_ERROR(root.Read("flag", &s->flag));
  const ConfigSection train = root.Section("train");
  FEDLORA_RETURN_IF_ERROR(train.Read("lr", &s->lr));
  FEDLORA_RETURN_IF_ERROR(train.Read("targets", &s->targets));
  FEDLORA_RETURN_IF_ERROR(train.Finish());
  return root.Finish();
}

Result<Sample> Load(std::string_view yaml, std::vector<std::string> overrides = {}) {
  FEDLORA_ASSIGN_OR_RETURN(ConfigDocument doc, ConfigDocument::Parse(yaml, "test.yaml", overrides));
  Sample s;
  FEDLORA_RETURN_IF_ERROR(ParseSample(doc, &s));
  return s;
}

TEST(YamlConfigTest, AbsentKeysKeepTheirDefaults) {
  const Result<Sample> s = Load("rounds: 3\n");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->rounds, 3u);
  EXPECT_EQ(s->lr, 1e-3);
  EXPECT_EQ(s->name, "x");
}

TEST(YamlConfigTest, UnknownKeyIsAnErrorNamingFileLineAndKey) {
  const Result<Sample> s = Load("rounds: 3\ntrain:\n  lr: 0.1\n  lrr: 0.2\n");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("test.yaml:4"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("'train.lrr'"), std::string::npos);
  EXPECT_NE(s.status().message().find("lr, targets"), std::string::npos);  // Valid keys listed.
}

TEST(YamlConfigTest, WrongTypeIsAnErrorNamingTheKeyAndValue) {
  const Result<Sample> s = Load("\n\nrounds: many\n");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("test.yaml:3"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("'rounds'"), std::string::npos);
  EXPECT_NE(s.status().message().find("'many'"), std::string::npos);
  EXPECT_FALSE(Load("rounds: -1\n").ok());
  EXPECT_FALSE(Load("rounds: 4294967296\n").ok());
  EXPECT_FALSE(Load("train: {lr: .nan}\n").ok());
  EXPECT_FALSE(Load("flag: maybe\n").ok());
  EXPECT_FALSE(Load("train: {targets: q_proj}\n").ok());
}

TEST(YamlConfigTest, OverridesReplaceAndCreateKeys) {
  const Result<Sample> s =
      Load("rounds: 3\n", {"rounds=5", "train.lr=0.25", "train.targets=[q_proj, v_proj]",
                           "flag=yes"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->rounds, 5u);
  EXPECT_EQ(s->lr, 0.25);
  EXPECT_EQ(s->targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(s->flag);
}

TEST(YamlConfigTest, UnknownOverrideKeyIsReportedAsComingFromTheCommandLine) {
  const Result<Sample> s = Load("rounds: 3\n", {"train.lrr=1"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("--set train.lrr"), std::string::npos)
      << s.status().message();
}

TEST(YamlConfigTest, MalformedOverridesAndYamlAreRejected) {
  EXPECT_FALSE(Load("", {"rounds"}).ok());
  EXPECT_FALSE(Load("", {"=3"}).ok());
  EXPECT_FALSE(Load("", {"a..b=3"}).ok());
  EXPECT_FALSE(Load("rounds: 3\n", {"rounds.x=1"}).ok());  // rounds is not a section.
  const Result<Sample> bad = Load("rounds: [1, 2\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("test.yaml:"), std::string::npos);
}

TEST(YamlConfigTest, SectionThatIsNotAMappingIsAnError) {
  const Result<Sample> s = Load("train: 5\n");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("'train' must be a mapping"), std::string::npos)
      << s.status().message();
}

TEST(YamlConfigTest, KeyGivenTwiceIsAnErrorRatherThanFirstOneWins) {
  const Result<Sample> s = Load("rounds: 5\nrounds: 7\n");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("more than once"), std::string::npos) << s.status().message();
}

TEST(YamlConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(ConfigDocument::Load("/nonexistent/x.yaml", {}).status().code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedlora::config
