#include "common/lora/adapter_layout.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedlora::lora {
namespace {

const std::vector<wire::ModuleInfo> kModules = {
    {"model.layers.0.self_attn.q_proj", 64, 64},
    {"model.layers.0.self_attn.k_proj", 32, 64},
    {"model.layers.0.mlp.down_proj", 64, 172},
};

TEST(AdapterLayoutTest, SelectsModulesByShortName) {
  const auto selected = SelectTargets(kModules, wire::LoraSpec{.rank = 4, .targets = {"k_proj"}});
  ASSERT_TRUE(selected.ok());
  ASSERT_EQ(selected->size(), 1u);
  EXPECT_EQ((*selected)[0].name, "model.layers.0.self_attn.k_proj");
}

TEST(AdapterLayoutTest, UnknownTargetIsAnErrorListingValidNames) {
  const auto r = SelectTargets(kModules, wire::LoraSpec{.rank = 4, .targets = {"qkv"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'qkv'"), std::string::npos);
  EXPECT_NE(r.status().message().find("down_proj"), std::string::npos);
}

TEST(AdapterLayoutTest, InitialAdapterFollowsPeftDefaults) {
  const TensorMap a = InitAdapter(kModules, 4, 7);
  ASSERT_EQ(a.size(), 6u);
  const Tensor& down_a = a.at("model.layers.0.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(down_a.shape, (std::vector<std::int64_t>{4, 172}));
  const double bound = 1.0 / std::sqrt(172.0);
  double max_abs = 0;
  for (double v : ToDoubles(down_a)) max_abs = std::max(max_abs, std::abs(v));
  EXPECT_LE(max_abs, bound);
  EXPECT_GT(max_abs, 0.8 * bound);  // Uniform over the whole range, not a tiny slice.
  const Tensor& down_b = a.at("model.layers.0.mlp.down_proj.lora_B.weight");
  EXPECT_EQ(down_b.shape, (std::vector<std::int64_t>{64, 4}));
  for (double v : ToDoubles(down_b)) EXPECT_EQ(v, 0.0);
}

TEST(AdapterLayoutTest, InitialAdapterIsDeterministicAndModuleOrderIndependent) {
  const std::vector<wire::ModuleInfo> reversed(kModules.rbegin(), kModules.rend());
  EXPECT_EQ(InitAdapter(kModules, 4, 7), InitAdapter(reversed, 4, 7));
  EXPECT_NE(InitAdapter(kModules, 4, 7), InitAdapter(kModules, 4, 8));
}

TEST(AdapterLayoutTest, ScaleHonoursRsLora) {
  EXPECT_DOUBLE_EQ(Scale({.rank = 4, .alpha = 8}), 2.0);
  EXPECT_DOUBLE_EQ(Scale({.rank = 4, .alpha = 8, .rslora = true}), 4.0);
}

}  // namespace
}  // namespace fedlora::lora
