// check_in.h — which virtual clients check in for a round when the simulator opens sessions
// per round (SimConfig::sessions = per_round).
//
// Cross-device federated learning (Bonawitz et al., "Towards Federated Learning at Scale", 2019)
// does not keep a connection to every device: devices that are idle, charging and on an
// unmetered network check in, and the server selects among those. The simulator models that: for
// round r it draws `count` distinct clients uniformly from the population, skipping those the
// fleet model says are offline in r (FleetModel::Online), opens real sessions for them only,
// and the real coordinator selects among the clients it sees connected.
//
// Torch-free; pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "sim/fleet_model.h"

namespace fedlora::sim {

struct CheckIns {
  std::vector<std::uint32_t> clients;  // Ascending, distinct, each below the population.
  std::uint32_t offline = 0;           // Clients drawn but offline in the round (skipped).
};

// The `count` clients of `population` that check in for `round`: a uniform draw without
// replacement, deterministic in (seed, round), skipping clients `fleet` (may be null: everyone
// is online) says are offline. kResourceExhausted, naming the round and the availability, when
// fewer than `count` clients are online. Requires count <= population. O(count) expected when
// most clients are online.
Result<CheckIns> DrawCheckIns(std::uint32_t population, std::uint32_t count, std::uint64_t seed,
                              std::uint64_t round, const FleetModel* fleet);

}  // namespace fedlora::sim
