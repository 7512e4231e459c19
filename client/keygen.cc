#include "client/keygen.h"

#include "common/crypto/curve_keys.h"
#include "common/wire/messages.h"

namespace fedlora::client {

Status RunClientKeygen(const std::string& dir, const std::string& name, bool force,
                       std::ostream& out) {
  if (!wire::ValidClientName(name)) {
    return InvalidArgument("--name '", name,
                           "' is not a client name (1-64 characters of [A-Za-z0-9._-], not "
                           "starting with '.')");
  }
  FEDLORA_ASSIGN_OR_RETURN(crypto::CurveKeyPair keys, crypto::WriteNewKeyFiles(dir, name, force));
  const crypto::KeyFilePaths paths = crypto::KeyFilesFor(dir, name);
  const std::string z85 = keys.public_key.Z85();
  out << "client key pair written:\n"
      << "  secret key:  " << paths.secret_path << " (mode 0600; never share it)\n"
      << "  public key:  " << z85 << "\n"
      << "  fingerprint: " << keys.public_key.Fingerprint() << "\n\n"
      << "Send the coordinator's operator this line (then read each other the fingerprint):\n"
      << "  " << name << " " << z85 << "\n"
      << "The operator enrolls it with:\n"
      << "  fedlora-coordinator clients add " << name << " '" << z85 << "' --config coordinator.yaml\n"
      << "In this client's config (the coordinator's public key comes from the operator):\n"
      << "  name: " << name << "\n"
      << "  security: {secret_key_file: " << paths.secret_path
      << ", coordinator_public_key: \"<coordinator public key>\"}\n";
  return OkStatus();
}

}  // namespace fedlora::client
