// tensor_compare.h — comparing wire tensor maps in tests (adapters trained two ways).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/tensor.h"

namespace fedlora::testing {

// The largest, over tensors, of max |a - b| / max |a| (max |a - b| where a is all zeros). Names
// and sizes must agree; a mismatch is a test failure.
inline double WorstRelativeDifference(const TensorMap& a, const TensorMap& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (const auto& [name, ta] : a) {
    const auto it = b.find(name);
    EXPECT_NE(it, b.end()) << name;
    if (it == b.end()) continue;
    const std::vector<float> x = ToFloats(ta), y = ToFloats(it->second);
    EXPECT_EQ(x.size(), y.size()) << name;
    double scale = 0, diff = 0;
    for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) {
      scale = std::max(scale, std::abs(static_cast<double>(x[i])));
      diff = std::max(diff, std::abs(static_cast<double>(x[i]) - y[i]));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

}  // namespace fedlora::testing
