#include "sim/check_in.h"

#include <algorithm>
#include <random>
#include <unordered_set>

#include "client/data/text_dataset.h"  // UniformBelow: the same draws with every standard library.
#include "common/seed.h"

namespace fedlora::sim {

namespace {
constexpr std::uint64_t kCheckInDrawSalt = 0xC11E;
}  // namespace

Result<CheckIns> DrawCheckIns(std::uint32_t population, std::uint32_t count, std::uint64_t seed,
                              std::uint64_t round, const FleetModel* fleet) {
  FEDLORA_CHECK_MSG(count <= population, count, " check-ins of ", population, " clients");
  std::mt19937_64 rng(MixSeed(MixSeed(seed, kCheckInDrawSalt), round));
  CheckIns out;
  out.clients.reserve(count);
  // Each client is considered at most once: from a shuffled order when the round takes more
  // than half of the population, else by rejecting repeats (a set of those drawn).
  const bool dense = 2ull * count > population;
  std::vector<std::uint32_t> order;
  std::unordered_set<std::uint32_t> drawn;
  if (dense) {
    order.resize(population);
    for (std::uint32_t i = 0; i < population; ++i) order[i] = i;
  }
  std::uint32_t tried = 0;
  while (out.clients.size() < count && tried < population) {
    std::uint32_t client;
    if (dense) {  // One Fisher–Yates step.
      std::swap(order[tried], order[tried + client::UniformBelow(rng, population - tried)]);
      client = order[tried];
    } else {
      client = static_cast<std::uint32_t>(client::UniformBelow(rng, population));
      if (!drawn.insert(client).second) continue;
    }
    ++tried;
    if (fleet != nullptr && !fleet->Online(client, round)) {
      ++out.offline;
      continue;
    }
    out.clients.push_back(client);
  }
  if (out.clients.size() < count) {
    return ResourceExhausted("only ", out.clients.size(), " of the ", population,
                             " clients are online in round ", round,
                             " (fleet availability), "
                             "fewer than the ",
                             count, " a round checks in");
  }
  std::sort(out.clients.begin(), out.clients.end());
  return out;
}

}  // namespace fedlora::sim
