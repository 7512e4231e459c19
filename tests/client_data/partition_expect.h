// partition_expect.h — an expectation shared by the partitioner tests (text and records).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

namespace fedlora::client::testing_assets {

// Every index in [0, n) lands in exactly one partition, and each partition is ascending.
inline void ExpectDisjointCover(const std::vector<std::vector<std::size_t>>& parts, std::size_t n) {
  std::vector<std::size_t> all;
  for (const auto& part : parts) {
    EXPECT_TRUE(std::is_sorted(part.begin(), part.end()));
    all.insert(all.end(), part.begin(), part.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<std::size_t> expected(n);
  std::iota(expected.begin(), expected.end(), std::size_t{0});
  EXPECT_EQ(all, expected);
}

}  // namespace fedlora::client::testing_assets
