#include "server/robust/update_norm.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedlora::server {
namespace {

ClientTask TaskWith(TensorMap tensors) {
  ClientTask task;
  task.tensors = std::move(tensors);
  return task;
}

TEST(UpdateNormTest, MeasuresTheChangeAgainstWhatTheTaskSent) {
  const ClientTask task = TaskWith({{"a", MakeF64({2, 3}, std::vector<double>{1, 1, 1, 1, 1, 1})}});
  ClientUpdate u;
  u.tensors["a"] = MakeF64({2, 3}, std::vector<double>{4, 1, 1, 1, 1, 5});  // Change (3, 4).
  EXPECT_DOUBLE_EQ(UpdateNorm(u, task), 5.0);
}

TEST(UpdateNormTest, TensorsTheTaskDidNotSendChangeFromZero) {
  const ClientTask task = TaskWith({});  // FLoRA: fresh factors every round.
  ClientUpdate u;
  u.tensors["b"] = MakeF64({1, 2}, std::vector<double>{3, 4});
  EXPECT_DOUBLE_EQ(UpdateNorm(u, task), 5.0);
}

TEST(UpdateNormTest, APrunedRankIsComparedWithTheLeadingBlockOfTheTask) {
  // HetLoRA: the task's B is 2 x 3 (rank 3), the client pruned it to rank 2 (2 x 2).
  const ClientTask task = TaskWith({{"b", MakeF64({2, 3}, std::vector<double>{1, 2, 9, 3, 4, 9})}});
  ClientUpdate u;
  u.tensors["b"] = MakeF64({2, 2}, std::vector<double>{1, 2, 3, 6});  // Change only at (1, 1): 2.
  EXPECT_DOUBLE_EQ(UpdateNorm(u, task), 2.0);
}

TEST(UpdateNormTest, ScalingTheChangeBringsItsNormToTheBoundAndKeepsTheStartingPoint) {
  const ClientTask task = TaskWith({{"a", MakeF64({2}, std::vector<double>{10, -10})},
                                    {"b", MakeF64({1}, std::vector<double>{0.5})}});
  ClientUpdate u;
  u.tensors["a"] = MakeF64({2}, std::vector<double>{1e30, -1e30});
  u.tensors["b"] = MakeF64({1}, std::vector<double>{-7e29});
  const double norm = UpdateNorm(u, task);
  ScaleChange(u, task, 2.0 / norm);
  EXPECT_NEAR(UpdateNorm(u, task), 2.0, 1e-12);
  const std::vector<double> a = ToDoubles(u.tensors.at("a"));
  EXPECT_LT(std::abs(a[0] - 10), 2.0);
  EXPECT_GT(a[0], 10.0);  // Same direction as the upload's change.
  EXPECT_LT(a[1], -10.0);
}

}  // namespace
}  // namespace fedlora::server
