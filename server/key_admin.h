// key_admin.h — the operator's key commands: `fedlora-coordinator keygen` and
// `fedlora-coordinator clients add|remove|list`. Each writes what it did to `out`.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedlora::server {

// Writes the coordinator's key pair (<dir>/<name>.key_secret, mode 0600, and <dir>/<name>.key) and
// prints the public key and fingerprint clients pin, and the config lines that use them.
Status RunCoordinatorKeygen(const std::string& dir, const std::string& name, bool force,
                            std::ostream& out);

// The authorized-clients file to edit: `file` when given, else security.authorized_clients of the
// coordinator config at `config_path` (with `--set` overrides). kInvalidArgument if neither names
// one.
Result<std::string> AuthorizedClientsPath(const std::string& file, const std::string& config_path,
                                          const std::vector<std::string>& overrides);

// Enrolls `name` with `public_key` (Z85) or the key in `key_file` (a public key file, as
// `fedlora-client keygen` writes it); `replace` rotates the key of an enrolled name. Prints its
// fingerprint for the operator to confirm with
// the data owner.
Status RunClientsAdd(const std::string& path, const std::string& name,
                     const std::string& public_key, const std::string& key_file, bool replace,
                     std::ostream& out);
Status RunClientsRemove(const std::string& path, const std::string& name, std::ostream& out);
// One line per enrolled client: name, public key, fingerprint.
Status RunClientsList(const std::string& path, std::ostream& out);

}  // namespace fedlora::server
