#include "server/rank_policy.h"

#include <gtest/gtest.h>

namespace fedlora::server {
namespace {

std::vector<wire::ModuleInfo> FourLayers() {
  std::vector<wire::ModuleInfo> m;
  for (int l = 0; l < 4; ++l) {
    m.push_back({"model.layers." + std::to_string(l) + ".self_attn.q_proj", 8, 8});
    m.push_back({"model.layers." + std::to_string(l) + ".mlp.down_proj", 8, 16});
  }
  return m;
}

const wire::LoraSpec kLora{.rank = 16, .alpha = 32, .targets = {"q_proj", "down_proj"}};

TEST(RankPolicyTest, UniformPlansAreEmptyAndMeanTheConfiguredRank) {
  const wire::AdapterPlan plan =
      PlanForClient({.kind = "uniform"}, kLora, FourLayers(), {}).value();
  EXPECT_TRUE(plan.modules.empty());
  EXPECT_EQ(PlannedRank(plan, kLora, "model.layers.2.mlp.down_proj"), 16u);
  EXPECT_EQ(Depth(plan, FourLayers()), 4u);
}

TEST(RankPolicyTest, CapabilityCapsEveryTargetAtTheDeclaredMaximum) {
  wire::Capabilities caps;
  caps.max_rank = 4;
  const wire::AdapterPlan plan =
      PlanForClient({.kind = "capability"}, kLora, FourLayers(), caps).value();
  ASSERT_EQ(plan.modules.size(), 8u);
  for (const auto& m : plan.modules) EXPECT_EQ(m.rank, 4u);
  caps.max_rank = 0;  // No declared limit: the configured rank.
  EXPECT_EQ(TopRank(PlanForClient({.kind = "capability"}, kLora, FourLayers(), caps).value(), kLora),
            16u);
}

TEST(RankPolicyTest, LegendGivesSlowClientsFewerLayersFromTheOutputWithRanksGrowingTowardIt) {
  wire::Capabilities slow;
  slow.relative_speed = 0.5;
  slow.max_rank = 8;
  const wire::AdapterPlan plan =
      PlanForClient({.kind = "legend", .min_rank = 2}, kLora, FourLayers(), slow).value();
  EXPECT_EQ(Depth(plan, FourLayers()), 2u);  // ceil(0.5 * 4) layers, counted from the output.
  EXPECT_EQ(PlannedRank(plan, kLora, "model.layers.0.self_attn.q_proj"), 0u);
  EXPECT_EQ(PlannedRank(plan, kLora, "model.layers.1.self_attn.q_proj"), 0u);
  const std::uint32_t lower = PlannedRank(plan, kLora, "model.layers.2.self_attn.q_proj");
  const std::uint32_t top = PlannedRank(plan, kLora, "model.layers.3.self_attn.q_proj");
  EXPECT_EQ(top, 8u);  // The client's declared maximum, at the output.
  EXPECT_LT(lower, top);
  EXPECT_GE(lower, 2u);
  wire::Capabilities fast;
  fast.relative_speed = 2.0;
  EXPECT_EQ(Depth(PlanForClient({.kind = "legend"}, kLora, FourLayers(), fast).value(),
                  FourLayers()),
            4u);
}

TEST(RankPolicyTest, UnknownPolicyAndBadBoundsAreRejected) {
  EXPECT_FALSE(ValidateRankPolicy({.kind = "random"}).ok());
  EXPECT_FALSE(ValidateRankPolicy({.kind = "legend", .min_depth = 0}).ok());
  EXPECT_EQ(LayerIndex("model.layers.12.mlp.up_proj"), 12);
  EXPECT_EQ(LayerIndex("lm_head"), -1);
}

}  // namespace
}  // namespace fedlora::server
