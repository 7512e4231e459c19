// shard_keys.h — `fedlora-sim keygen`: CURVE keys for the shards of a simulated federation.
//
// One key pair per shard (<dir>/shard-<I>.key_secret, mode 0600, and .key), and the
// authorized-clients file enrolling every virtual client under its shard's key (client i runs on
// shard i % shards). The shards' client.security.secret_key_file names its key with a "{shard}"
// placeholder ("keys/shard-{shard}.key_secret"), so every shard reads the same config.
#pragma once

#include <ostream>
#include <string>

#include "common/status.h"
#include "sim/simulator.h"

namespace fedlora::sim {

// Writes the shard keys and `<dir>/authorized_clients` (appending to it when it exists), and
// prints what to configure. kAlreadyExists for existing shard keys without `force`.
Status RunShardKeygen(const SimConfig& config, const Placement& placement, const std::string& dir,
                      bool force, std::ostream& out);

}  // namespace fedlora::sim
