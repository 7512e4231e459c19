// keygen.h — `fedlora-client keygen`: a data owner's CURVE key pair, and what to send the
// coordinator's operator to be enrolled.
#pragma once

#include <ostream>
#include <string>

#include "common/status.h"

namespace fedlora::client {

// Writes <dir>/<name>.key_secret (mode 0600) and <dir>/<name>.key, then prints the name, public
// key and fingerprint to send the operator, the command that enrolls them, and the config lines
// that use the key. kAlreadyExists when a key file is there and `force` is false.
Status RunClientKeygen(const std::string& dir, const std::string& name, bool force,
                       std::ostream& out);

}  // namespace fedlora::client
