#include "client/config.h"

#include <gtest/gtest.h>

namespace fedlora::client {
namespace {

TEST(ClientConfigTest, ShippedExampleLoadsWithPathsResolvedAgainstTheFile) {
  const Result<ClientConfig> c = LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml", {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->model.path,
            std::string(FEDLORA_SOURCE_DIR) + "/assets/models/stories260K/stories260K.bin");
  EXPECT_FALSE(c->name.empty());  // Defaulted from the host name.
}

TEST(ClientConfigTest, OverridesAreAppliedAndCommandLinePathsStayAsGiven) {
  const Result<ClientConfig> c =
      LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml",
                       {"name=alice", "data.partition_index=3", "data.path=corpus.txt"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->name, "alice");
  EXPECT_EQ(c->data.partition_index, 3u);
  EXPECT_EQ(c->data.path, "corpus.txt");
}

TEST(ClientConfigTest, InvalidValuesNameTheirKey) {
  const auto message = [](std::vector<std::string> overrides) {
    const Result<ClientConfig> c =
        LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml", overrides);
    EXPECT_FALSE(c.ok());
    return c.ok() ? std::string() : c.status().message();
  };
  EXPECT_NE(message({"data.partition=random"}).find("data.partition"), std::string::npos);
  EXPECT_NE(message({"data.partition_index=8"}).find("partition_index"), std::string::npos);
  EXPECT_NE(message({"model.fromat=hf"}).find("model.fromat"), std::string::npos);
  EXPECT_NE(message({"device=tpu"}).find("device"), std::string::npos);
  EXPECT_NE(message({"data.heldout_fraction=1.5"}).find("heldout_fraction"), std::string::npos);
  EXPECT_NE(message({"data.partition=sample"}).find("data.sample_paragraphs"), std::string::npos);
  EXPECT_NE(message({"data.sample_paragraphs=4"}).find("data.sample_paragraphs"),
            std::string::npos);
}

TEST(ClientConfigTest, TheSamplePartitionerTakesItsParagraphsPerClient) {
  const Result<ClientConfig> c = LoadClientConfig(
      FEDLORA_SOURCE_DIR "/configs/client.yaml",
      {"data.partition=sample", "data.sample_paragraphs=8", "data.num_partitions=100000"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->data.sample_paragraphs, 8u);
}

TEST(ClientConfigTest, DpSgdSectionParsesAndRefusesARunWithoutABudget) {
  const Result<ClientConfig> c =
      LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml",
                       {"privacy.dp_sgd.enabled=true", "privacy.dp_sgd.clip=0.25",
                        "privacy.dp_sgd.sample_rate=0.01"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->privacy.dp_sgd.enabled);
  EXPECT_DOUBLE_EQ(c->privacy.dp_sgd.clip, 0.25);
  EXPECT_DOUBLE_EQ(c->privacy.dp_sgd.sample_rate, 0.01);
  EXPECT_DOUBLE_EQ(c->privacy.dp_sgd.target_epsilon, 8);
  for (const auto& [override_, key] :
       {std::pair{"privacy.dp_sgd.target_epsilon=0", "privacy.dp_sgd.target_epsilon"},
        {"privacy.dp_sgd.noise_multiplier=0", "privacy.dp_sgd.noise_multiplier"},
        {"privacy.dp_sgd.sample_rate=1.5", "privacy.dp_sgd.sample_rate"},
        {"privacy.dp_sgd.delta=1", "privacy.dp_sgd.delta"}}) {
    const Result<ClientConfig> bad = LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml",
                                                      {"privacy.dp_sgd.enabled=true", override_});
    ASSERT_FALSE(bad.ok()) << override_;
    EXPECT_NE(bad.status().message().find(key), std::string::npos) << bad.status().message();
  }
}

TEST(ClientConfigTest, SecuritySectionResolvesPathsAndTheNamePlaceholder) {
  const Result<ClientConfig> c =
      LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml", {"name=alice"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->security.mode, "auto");
  EXPECT_EQ(c->security.secret_key_file,
            std::string(FEDLORA_SOURCE_DIR) + "/keys/alice.key_secret");
  EXPECT_EQ(c->security.coordinator_public_key_file,
            std::string(FEDLORA_SOURCE_DIR) + "/keys/coordinator.key");
}

TEST(ClientConfigTest, SecurityMistakesNameTheirKey) {
  const auto message = [](std::vector<std::string> overrides) {
    const Result<ClientConfig> c =
        LoadClientConfig(FEDLORA_SOURCE_DIR "/configs/client.yaml", overrides);
    EXPECT_FALSE(c.ok());
    return c.ok() ? std::string() : c.status().message();
  };
  EXPECT_NE(message({"security.mode=tls"}).find("security.mode"), std::string::npos);
  EXPECT_NE(message({"security.coordinator_public_key=abc"})
                .find("security.coordinator_public_key"),
            std::string::npos);
  // Both ways of pinning at once.
  EXPECT_NE(message({"security.coordinator_public_key=\"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\""})
                .find("both set"),
            std::string::npos);
}

}  // namespace
}  // namespace fedlora::client
