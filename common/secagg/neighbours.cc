#include "common/secagg/neighbours.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/secagg/masking.h"

namespace fedlora::secagg {

std::uint32_t DefaultDegree(std::uint32_t n) {
  if (n <= 16) return n > 0 ? n - 1 : 0;
  auto k = static_cast<std::uint32_t>(std::ceil(3.0 * std::log2(static_cast<double>(n))));
  if (k % 2 == 1) ++k;
  return std::min(k, n - 1);
}

Result<std::vector<std::vector<std::uint32_t>>> NeighbourGraph(std::uint32_t n, std::uint32_t k,
                                                               const crypto::Seed& seed) {
  if (n < 2) return InvalidArgument("secure aggregation needs at least 2 clients, not ", n);
  std::vector<std::vector<std::uint32_t>> graph(n);
  if (k >= n - 1) {  // The complete graph.
    for (std::uint32_t u = 0; u < n; ++u) {
      for (std::uint32_t v = 0; v < n; ++v) {
        if (v != u) graph[u].push_back(v);
      }
    }
    return graph;
  }
  if (k == 0 || k % 2 == 1) {
    return InvalidArgument("secure aggregation neighbourhood degree ", k, " for ", n,
                           " clients: must be even and >= 2 (or >= n - 1 for the complete graph)");
  }
  // Fisher-Yates over the seed's words; a draw in the biased tail of 2^32 is rejected.
  std::vector<std::uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::vector<std::uint32_t> words(4 * static_cast<std::size_t>(n) + 64);
  ExpandMask(seed, Modulus::Bits(32).value(), words);
  std::size_t next = 0;
  for (std::uint32_t i = n - 1; i > 0; --i) {
    const std::uint64_t range = std::uint64_t{i} + 1;
    const std::uint64_t limit = (std::uint64_t{1} << 32) - (std::uint64_t{1} << 32) % range;
    std::uint32_t word;
    do {
      if (next == words.size()) {  // Vanishingly rare: draw more of the same stream.
        words.resize(words.size() * 2);
        ExpandMask(seed, Modulus::Bits(32).value(), words);
      }
      word = words[next++];
    } while (word >= limit);
    std::swap(order[i], order[word % range]);
  }
  for (std::uint32_t p = 0; p < n; ++p) {
    for (std::uint32_t d = 1; d <= k / 2; ++d) {
      const std::uint32_t u = order[p], v = order[(p + d) % n];
      graph[u].push_back(v);
      graph[v].push_back(u);
    }
  }
  for (auto& neighbours : graph) std::sort(neighbours.begin(), neighbours.end());
  return graph;
}

}  // namespace fedlora::secagg
