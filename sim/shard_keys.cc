#include "sim/shard_keys.h"

#include <vector>

#include "common/crypto/curve_keys.h"
#include "server/authorized_clients.h"

namespace fedlora::sim {

Status RunShardKeygen(const SimConfig& config, const Placement& placement, const std::string& dir,
                      bool force, std::ostream& out) {
  if (placement.shards == 0) return InvalidArgument("--shards must be >= 1");
  std::vector<crypto::CurvePublicKey> keys;
  for (std::uint32_t s = 0; s < placement.shards; ++s) {
    FEDLORA_ASSIGN_OR_RETURN(crypto::CurveKeyPair pair,
                             crypto::WriteNewKeyFiles(dir, StrCat("shard-", s), force));
    keys.push_back(pair.public_key);
  }
  const std::string authorized = dir + "/authorized_clients";
  for (std::uint32_t i = 0; i < config.num_clients; ++i) {
    const std::string name = ClientName(placement.client_prefix, i);
    Status s = server::AddAuthorizedClient(authorized, name, keys[i % placement.shards]);
    if (s.code() == StatusCode::kAlreadyExists && force) {
      FEDLORA_RETURN_IF_ERROR(server::RemoveAuthorizedClient(authorized, name));
      s = server::AddAuthorizedClient(authorized, name, keys[i % placement.shards]);
    }
    FEDLORA_RETURN_IF_ERROR(s);
  }
  out << placement.shards << " shard key pair(s) written to " << dir << "/shard-<I>.key_secret\n";
  for (std::uint32_t s = 0; s < placement.shards; ++s) {
    out << "  shard-" << s << "  " << keys[s].Fingerprint() << "\n";
  }
  out << config.num_clients << " virtual client(s) enrolled in " << authorized
      << " (client i under the key of shard i % " << placement.shards << ")\n\n"
      << "In the simulation config (every shard reads the same file):\n"
      << "  client:\n    security: {secret_key_file: " << dir
      << "/shard-{shard}.key_secret, coordinator_public_key: \"<coordinator public key>\"}\n"
      << "and the coordinator's security.authorized_clients: " << authorized << "\n";
  return OkStatus();
}

}  // namespace fedlora::sim
