// The SecAgg+ neighbourhood graph: k-regular, symmetric, without self-loops, the same for the
// same seed on every run, another for another seed; the complete graph for small n.
#include "common/secagg/neighbours.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace fedlora::secagg {
namespace {

crypto::Seed SeedOf(std::uint8_t b) {
  crypto::Seed s{};
  s.fill(b);
  return s;
}

void ExpectRegularAndSymmetric(const std::vector<std::vector<std::uint32_t>>& g, std::uint32_t k) {
  for (std::uint32_t u = 0; u < g.size(); ++u) {
    ASSERT_EQ(g[u].size(), k) << "client " << u;
    EXPECT_TRUE(std::adjacent_find(g[u].begin(), g[u].end()) == g[u].end()) << "duplicate edge";
    for (std::uint32_t v : g[u]) {
      EXPECT_NE(v, u);
      EXPECT_TRUE(std::binary_search(g[v].begin(), g[v].end(), u)) << u << " - " << v;
    }
  }
}

TEST(NeighboursTest, TheGraphIsKRegularSymmetricAndDrawnFromTheSeed) {
  const auto g = NeighbourGraph(1000, 30, SeedOf(1)).value();
  ExpectRegularAndSymmetric(g, 30);
  EXPECT_EQ(NeighbourGraph(1000, 30, SeedOf(1)).value(), g);
  EXPECT_NE(NeighbourGraph(1000, 30, SeedOf(2)).value(), g);
  // Not the identity ring: client 0's neighbours are not simply 1..15 and 985..999.
  std::vector<std::uint32_t> ring;
  for (std::uint32_t d = 1; d <= 15; ++d) ring.push_back(d);
  for (std::uint32_t d = 985; d < 1000; ++d) ring.push_back(d);
  EXPECT_NE(g[0], ring);
}

TEST(NeighboursTest, SmallFederationsAndLargeDegreesUseTheCompleteGraph) {
  EXPECT_EQ(DefaultDegree(10), 9u);
  EXPECT_EQ(DefaultDegree(1000), 30u);
  EXPECT_EQ(DefaultDegree(100000), 50u);
  ExpectRegularAndSymmetric(NeighbourGraph(10, 9, SeedOf(3)).value(), 9);
  ExpectRegularAndSymmetric(NeighbourGraph(10, 40, SeedOf(3)).value(), 9);
  ExpectRegularAndSymmetric(NeighbourGraph(2, 1, SeedOf(3)).value(), 1);
}

TEST(NeighboursTest, AnOddOrZeroDegreeOrOneClientIsRefused) {
  EXPECT_FALSE(NeighbourGraph(1, 0, SeedOf(0)).ok());
  EXPECT_FALSE(NeighbourGraph(100, 0, SeedOf(0)).ok());
  EXPECT_FALSE(NeighbourGraph(100, 7, SeedOf(0)).ok());
}

}  // namespace
}  // namespace fedlora::secagg
