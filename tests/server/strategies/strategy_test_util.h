// strategy_test_util.h — random adapters, dense reference products and fixtures for the
// strategy tests. Dense d_out x d_in matrices appear only here, as the reference.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/lora/adapter_layout.h"
#include "common/tensor.h"
#include "server/strategies/make_strategy.h"
#include "server/strategies/strategy.h"

namespace fedlora::server::testing {

// Two modules with d_out != d_in, to catch transposes.
inline const std::vector<wire::ModuleInfo> kModules = {
    {"model.layers.0.self_attn.q_proj", 9, 6}, {"model.layers.0.mlp.up_proj", 11, 6}};
inline const ModelLayout kLayout{std::string(64, 'd'), kModules};

inline StrategyContext Context(std::uint32_t rank = 3, double alpha = 6.0) {
  StrategyContext c;
  c.lora = {.rank = rank, .alpha = alpha, .targets = {"q_proj", "up_proj"}};
  c.train.upload_dtype = DType::kF64;
  c.seed = 11;
  c.state_dtype = DType::kF64;
  return c;
}

// A dense row-major matrix.
struct Dense {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> v;
  double& at(std::int64_t i, std::int64_t j) { return v[i * cols + j]; }
  double at(std::int64_t i, std::int64_t j) const { return v[i * cols + j]; }
};

inline Dense Zero(std::int64_t rows, std::int64_t cols) {
  return Dense{rows, cols, std::vector<double>(static_cast<std::size_t>(rows * cols), 0.0)};
}
inline Dense FromTensor(const Tensor& t) { return Dense{t.shape[0], t.shape[1], ToDoubles(t)}; }

// out += scale * x * y.
inline void AddProduct(Dense& out, const Dense& x, const Dense& y, double scale = 1.0) {
  for (std::int64_t i = 0; i < x.rows; ++i)
    for (std::int64_t k = 0; k < x.cols; ++k)
      for (std::int64_t j = 0; j < y.cols; ++j) out.at(i, j) += scale * x.at(i, k) * y.at(k, j);
}

inline double MaxAbsDiff(const Dense& a, const Dense& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.v.size(); ++i) m = std::max(m, std::abs(a.v[i] - b.v[i]));
  return m;
}

inline Tensor Random(std::int64_t rows, std::int64_t cols, std::mt19937_64& rng, double sd = 1) {
  std::normal_distribution<double> normal(0.0, sd);
  std::vector<double> v(static_cast<std::size_t>(rows * cols));
  for (double& x : v) x = normal(rng);
  return FromDoubles(DType::kF64, {rows, cols}, v);
}

// An upload answering `task` with random factors of the task's expected shapes.
inline ClientUpdate RandomUpdate(const ClientTask& task, std::uint64_t examples,
                                 std::mt19937_64& rng) {
  ClientUpdate u;
  u.client_id = task.client_id;
  u.num_examples = examples;
  u.num_samples = 8;
  u.metrics = {{"train_loss", 1.0}};
  for (const auto& [name, e] : task.expected_upload) {
    u.tensors[name] = Random(e.spec.shape[0], e.spec.shape[1], rng);
  }
  return u;
}

inline std::vector<ClientInfo> Clients(std::initializer_list<const char*> ids) {
  std::vector<ClientInfo> out;
  for (const char* id : ids) out.push_back(ClientInfo{id, {}, {}, {}});
  return out;
}

// The dense sum of every correction of `module` in `log`, in log order.
inline Dense CorrectionSum(const CorrectionLog& log, const wire::ModuleInfo& m) {
  Dense sum = Zero(m.d_out, m.d_in);
  const auto add = [&](const CorrectionEntry& e) {
    const auto it = e.modules.find(m.name);
    if (it == e.modules.end()) return;
    if (it->second.is_dense()) {
      const Dense d = FromTensor(it->second.dense);
      for (std::size_t i = 0; i < sum.v.size(); ++i) sum.v[i] += d.v[i];
    } else {
      AddProduct(sum, FromTensor(it->second.u), FromTensor(it->second.v));
    }
  };
  if (log.snapshot()) add(*log.snapshot());
  for (const CorrectionEntry& e : log.entries()) add(e);
  return sum;
}

// A strategy from the catalogue, with the test layout set.
inline std::unique_ptr<Strategy> Make(const std::string& name, StrategyConfig config = {},
                                      StrategyContext context = Context()) {
  config.name = name;
  Result<std::unique_ptr<Strategy>> s = MakeStrategy(config, context);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE((*s)->Initialize(kLayout, GlobalState{}).ok());
  return std::move(s).value();
}

}  // namespace fedlora::server::testing
