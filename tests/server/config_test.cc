#include "server/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fedlora::server {
namespace {

Result<CoordinatorConfig> Parse(std::string_view yaml, std::vector<std::string> overrides = {}) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc,
                           config::ConfigDocument::Parse(yaml, "coord.yaml", overrides));
  CoordinatorConfig c;
  FEDLORA_RETURN_IF_ERROR(ParseCoordinatorConfig(doc.Root(), &c));
  return c;
}

TEST(CoordinatorConfigTest, ShippedExampleLoads) {
  const Result<CoordinatorConfig> c =
      LoadCoordinatorConfig(FEDLORA_SOURCE_DIR "/configs/coordinator.yaml", {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->strategy.name, "fedavg");
}

TEST(CoordinatorConfigTest, ShippedExampleUsesCurveWithKeysBesideTheRepository) {
  const Result<CoordinatorConfig> c =
      LoadCoordinatorConfig(FEDLORA_SOURCE_DIR "/configs/coordinator.yaml", {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->security.mode, "auto");
  EXPECT_EQ(c->security.secret_key_file,
            std::string(FEDLORA_SOURCE_DIR) + "/keys/coordinator.key_secret");
  EXPECT_FALSE(c->security.allow_insecure);
  EXPECT_FALSE(Parse("security: {mode: tls}").ok());
  EXPECT_NE(Parse("security: {mode: tls}").status().message().find("security.mode"),
            std::string::npos);
}

TEST(CoordinatorConfigTest, DefaultsAreUsable) {
  const Result<CoordinatorConfig> c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->rounds, 10u);
  EXPECT_EQ(c->lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
}

TEST(CoordinatorConfigTest, OverridesReachNestedSections) {
  const Result<CoordinatorConfig> c =
      Parse("rounds: 3\n", {"train.learning_rate=0.01", "lora.rank=4", "round.min_clients=3"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->train.learning_rate, 0.01);
  EXPECT_EQ(c->lora.rank, 4u);
  EXPECT_EQ(c->round.min_clients, 3u);
}

TEST(CoordinatorConfigTest, TypoInANestedKeyNamesItsLine) {
  const Result<CoordinatorConfig> c = Parse("rounds: 3\ntrain:\n  learning_rat: 0.1\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("coord.yaml:3"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("train.learning_rat"), std::string::npos);
}

TEST(CoordinatorConfigTest, RangeErrorsNameTheKey) {
  const auto message = [](std::string_view yaml) {
    const Result<CoordinatorConfig> c = Parse(yaml);
    EXPECT_FALSE(c.ok()) << yaml;
    return c.ok() ? std::string() : c.status().message();
  };
  EXPECT_NE(message("rounds: 0").find("rounds"), std::string::npos);
  EXPECT_NE(message("train: {learning_rate: -1}").find("learning_rate"), std::string::npos);
  EXPECT_NE(message("lora: {targets: [qkv]}").find("qkv"), std::string::npos);
  EXPECT_NE(message("strategy: {name: fedprox}").find("fedprox"), std::string::npos);
  EXPECT_NE(message("round: {quorum: 3, min_clients: 2}").find("quorum"), std::string::npos);
  EXPECT_NE(message("base_model_sha256: abc").find("64 hex"), std::string::npos);
  EXPECT_NE(message("train: {upload_dtype: int8}").find("int8"), std::string::npos);
}

TEST(CoordinatorConfigTest, NormBoundAndExampleCapAreOnByDefault) {
  const Result<CoordinatorConfig> c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->robust.norm_bound, 100.0);
  EXPECT_EQ(c->robust.norm_action, "clip");
  EXPECT_EQ(c->strategy.max_examples_per_client, 1'000'000u);
  EXPECT_EQ(c->strategy.rule.name, "mean");
}

TEST(CoordinatorConfigTest, RobustSectionIsReadAndCheckedKeyByKey) {
  const Result<CoordinatorConfig> c =
      Parse("robust: {norm_bound: 5, norm_action: reject, rule: trimmed_mean, trim_fraction: 0.2}\n"
            "strategy: {name: fedsa, max_weight_share: 0.3}");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->robust.norm_bound, 5.0);
  EXPECT_EQ(c->robust.norm_action, "reject");
  EXPECT_EQ(c->strategy.rule.name, "trimmed_mean");
  EXPECT_EQ(c->strategy.rule.trim_fraction, 0.2);
  EXPECT_EQ(c->strategy.max_weight_share, 0.3);
  const auto message = [](std::string_view yaml) { return Parse(yaml).status().message(); };
  EXPECT_NE(message("robust: {norm_action: drop}").find("robust.norm_action"), std::string::npos);
  EXPECT_NE(message("robust: {norm_bound: -1}").find("robust.norm_bound"), std::string::npos);
  EXPECT_NE(message("robust: {rule: krum}").find("robust.rule"), std::string::npos);
  EXPECT_NE(message("strategy: {max_weight_share: 0}").find("max_weight_share"), std::string::npos);
}

TEST(CoordinatorConfigTest, ARobustRuleWithAStrategyThatIsNotAnAverageIsRefusedSayingWhich) {
  const std::string m = std::string(Parse("robust: {rule: median}\nstrategy: {name: fedex}")
                                        .status()
                                        .message());
  EXPECT_NE(m.find("fedex"), std::string::npos) << m;
  EXPECT_NE(m.find("fedavg, ffa, fedsa, fedsb and fedsvd"), std::string::npos) << m;
  EXPECT_TRUE(Parse("robust: {rule: multi_krum}\nstrategy: {name: fedsb}").ok());
}

TEST(CoordinatorConfigTest, ExportSectionIsParsedStrictly) {
  Result<CoordinatorConfig> c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->export_config.peft_dir, "");  // <state_dir>/peft
  EXPECT_TRUE(c->export_config.peft_every_round);
  EXPECT_EQ(c->export_config.dtype, DType::kF32);
  c = Parse("export:\n  peft_dir: /srv/adapter\n  peft_every_round: false\n"
            "  base_model_name_or_path: org/model\n  dtype: bf16\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->export_config.peft_dir, "/srv/adapter");
  EXPECT_FALSE(c->export_config.peft_every_round);
  EXPECT_EQ(c->export_config.base_model_name_or_path, "org/model");
  EXPECT_EQ(c->export_config.dtype, DType::kBF16);
  c = Parse("rounds: 2\nexport:\n  peft_dri: x\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("coord.yaml:3"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("export.peft_dri"), std::string::npos);
  c = Parse("export: {dtype: f64}");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("export.dtype"), std::string::npos) << c.status().message();
}

}  // namespace
}  // namespace fedlora::server

namespace fedlora::server {
namespace {

std::string SecureConfigError(std::vector<std::string> overrides) {
  overrides.push_back("secure_aggregation.enabled=true");
  const Result<CoordinatorConfig> c = Parse("", overrides);
  return c.ok() ? std::string() : std::string(c.status().message());
}

TEST(SecureAggregationConfigTest, AModulusThatCouldWrapIsRefusedSayingHowManyClientsFit) {
  const std::string e = SecureConfigError(
      {"round.min_clients=2", "round.max_clients=5000", "secure_aggregation.levels_bits=20"});
  EXPECT_NE(e.find("round.max_clients"), std::string::npos) << e;
  EXPECT_NE(e.find("at most 4096 clients fit"), std::string::npos) << e;
  EXPECT_EQ(SecureConfigError({"round.min_clients=2", "round.max_clients=4096"}), "");
}

TEST(SecureAggregationConfigTest, AThresholdAboveTheSmallestRoundOrOfOneIsRefused) {
  const std::string above =
      SecureConfigError({"round.min_clients=3", "secure_aggregation.threshold=4"});
  EXPECT_NE(above.find("threshold 4 is above round.min_clients 3"), std::string::npos) << above;
  const std::string one =
      SecureConfigError({"round.min_clients=3", "secure_aggregation.threshold=1"});
  EXPECT_NE(one.find("threshold 1"), std::string::npos) << one;
  EXPECT_NE(SecureConfigError({"round.min_clients=1"}).find("min_clients >= 2"), std::string::npos);
}

TEST(SecureAggregationConfigTest, SelectionIsCappedAtWhatTheModulusHolds) {
  SecureAggregationConfig sa;
  sa.levels_bits = 20;
  sa.modulus_bits = 32;
  EXPECT_EQ(sa.MaxClients(0), 4096u);
  EXPECT_EQ(sa.MaxClients(100), 100u);
  EXPECT_EQ(sa.MaxClients(10000), 4096u);
}

TEST(CoordinatorConfigTest, PrivacySectionIsReadAndCheckedAgainstTheRest) {
  const Result<CoordinatorConfig> c = Parse(
      "privacy: {enabled: true, clip: 0.5, target_epsilon: 4, delta: 1.0e-6, sample_rate: 0.1}\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->privacy.enabled);
  EXPECT_EQ(c->privacy.clip, 0.5);
  EXPECT_EQ(c->privacy.noise_multiplier, 0);  // Solved at start from the budget.
  EXPECT_EQ(c->privacy.target_epsilon, 4);
  EXPECT_EQ(c->privacy.delta, 1e-6);
  EXPECT_EQ(c->privacy.sample_rate, 0.1);
  EXPECT_FALSE(Parse("").value().privacy.enabled);
  const auto message = [](std::string_view yaml) { return Parse(yaml).status().message(); };
  EXPECT_NE(message("privacy: {enabled: true, noise_multiplier: 1}").find("privacy.clip"),
            std::string::npos);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1}")
                .find("privacy.noise_multiplier or "
                      "privacy.target_epsilon"),
            std::string::npos);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1, delta: 0}")
                .find("privacy.delta"),
            std::string::npos);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1, sample_rate: 1.5}")
                .find("privacy.sample_rate"),
            std::string::npos);
  // With secure aggregation the clients add the noise: min_clients says how many shares.
  const std::string secure =
      "round: {min_clients: 3, quorum: 2}\nsecure_aggregation: {enabled: true}\n";
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1}\n" + secure)
                .find("privacy.min_clients must be >= 2 with secure_aggregation"),
            std::string::npos);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1, min_clients: 3, "
                    "target_quantile: 0.5, count_noise_multiplier: 4}\n" +
                    secure)
                .find("privacy.target_quantile"),
            std::string::npos);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1, min_clients: 3}")
                .find("privacy.min_clients only applies with secure_aggregation"),
            std::string::npos);
  const Result<CoordinatorConfig> distributed =
      Parse("privacy: {enabled: true, clip: 1, noise_multiplier: 1, min_clients: 3}\n" + secure);
  ASSERT_TRUE(distributed.ok()) << distributed.status().ToString();
  EXPECT_EQ(distributed->privacy.min_clients, 3u);
  EXPECT_NE(message("privacy: {enabled: true, clip: 1, noise_multiplier: 1, epsilon: 3}")
                .find("privacy.epsilon"),
            std::string::npos);
}

}  // namespace
}  // namespace fedlora::server
