// Every strategy end to end in the simulator: the real coordinator and real clients training
// stories260K on tinyshakespeare, three rounds each, with the shipped experiment configs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/json_lines.h"
#include "common/wire/codec.h"
#include "sim/simulator.h"

namespace fedlora::sim {
namespace {

class StrategySimulationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    out_ = ::testing::TempDir() + "/fedlora_sim_strategy_" + GetParam();
    std::filesystem::remove_all(out_);
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(out_);
  }
  std::vector<nlohmann::json> Metrics() const {
    return testing::ReadJsonLines(out_ + "/metrics.jsonl");
  }
  std::string out_;
};

TEST_P(StrategySimulationTest, ThreeRoundsCompleteAndTheEvalLossFalls) {
  const std::string config = std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-" +
                             GetParam() + ".yaml";
  std::vector<std::string> overrides = {
      "num_clients=3",           "log_level=warn",
      "coordinator.rounds=3",    "coordinator.round.min_clients=3",
      "coordinator.round.quorum=3", "coordinator.train.local_steps=8",
      "coordinator.train.batch_size=4", "coordinator.train.seq_len=64",
      "coordinator.eval.max_batches=4"};
  const Result<SimConfig> probe = LoadSimConfig(config, {"num_clients=8"}, out_);
  ASSERT_TRUE(probe.ok()) << probe.status().ToString();
  if (!probe->client_max_ranks.empty()) overrides.push_back("client_max_ranks=[16, 4, 2]");
  if (!probe->client_relative_speeds.empty()) {
    overrides.push_back("client_relative_speeds=[1.0, 0.6, 0.2]");
  }
  Result<SimConfig> c = LoadSimConfig(config, overrides, out_);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(RunSimulation(*c).ok());
  const std::vector<nlohmann::json> m = Metrics();
  ASSERT_EQ(m.size(), 4u);
  for (int r = 1; r <= 3; ++r) {
    EXPECT_EQ(m[r]["clients_reported"], 3) << "round " << r;
    EXPECT_EQ(m[r]["strategy"], GetParam().substr(0, GetParam().find('-')));
  }
  EXPECT_LT(m[3]["eval_loss"].get<double>(), m[0]["eval_loss"].get<double>() - 0.05)
      << "round 0 " << m[0]["eval_loss"] << ", round 3 " << m[3]["eval_loss"];
}

INSTANTIATE_TEST_SUITE_P(EveryStrategy, StrategySimulationTest,
                         ::testing::Values("fedavg", "ffa", "fedex", "flora", "fedsa", "fedsb",
                                           "fedsvd", "lorafair", "hetlora", "fslora",
                                           "flora-legend"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Fed-SB's uplink is R alone: per client and round, r^2 x modules x 4 bytes plus the envelope.
TEST(FedSbTrafficTest, UploadIsRSquaredPerModulePlusTheEnvelope) {
  const std::string out = ::testing::TempDir() + "/fedlora_sim_fedsb_bytes";
  std::filesystem::remove_all(out);
  Result<SimConfig> c = LoadSimConfig(
      std::string(FEDLORA_SOURCE_DIR) + "/configs/sim/shakespeare-fedsb.yaml",
      {"num_clients=2", "log_level=warn", "coordinator.rounds=1",
       "coordinator.round.min_clients=2", "coordinator.round.quorum=2",
       "coordinator.train.local_steps=2", "coordinator.train.batch_size=2",
       "coordinator.train.seq_len=32", "coordinator.eval.enabled=false"},
      out);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(RunSimulation(*c).ok());
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  std::getline(in, line);  // Round 0.
  std::getline(in, line);
  const nlohmann::json round1 = nlohmann::json::parse(line);
  const std::int64_t r = c->coordinator.lora.rank;
  const std::size_t modules = 5 * 7;  // stories260K: 5 layers x 7 linear modules.
  EXPECT_EQ(round1["params_up"].get<std::uint64_t>(), 2 * modules * r * r);
  // The same Update, rebuilt: R tensors of the same names and the client's metric names.
  wire::Update u;
  u.round = 1;
  u.ticket.attempt = 1;
  u.ticket.nonce.fill(0xA5);  // The size of a real ticket; its value does not change the bytes.
  u.metrics = {{"train_loss", 0}, {"steps", 0},           {"tokens", 0},
               {"seconds", 0},    {"trainable_params", 0}, {"state_bytes", 0}};
  for (int layer = 0; layer < 5; ++layer) {
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      u.tensors["model.layers." + std::to_string(layer) + "." + m + ".lora_R.weight"] =
          Zeros(DType::kF32, {r, r});
    }
  }
  const wire::EncodedMessage encoded = wire::Encode(wire::Envelope{wire::kProtocolVersion, 1, 2, u});
  EXPECT_EQ(encoded.total_bytes() - encoded.envelope.size(), modules * r * r * 4);
  EXPECT_EQ(round1["bytes_up"].get<std::uint64_t>(), 2 * encoded.total_bytes());
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace fedlora::sim
