#include "server/key_admin.h"

#include <algorithm>
#include <iomanip>

#include "common/crypto/curve_keys.h"
#include "server/authorized_clients.h"
#include "server/config.h"

namespace fedlora::server {

Status RunCoordinatorKeygen(const std::string& dir, const std::string& name, bool force,
                            std::ostream& out) {
  FEDLORA_ASSIGN_OR_RETURN(crypto::CurveKeyPair keys, crypto::WriteNewKeyFiles(dir, name, force));
  const crypto::KeyFilePaths paths = crypto::KeyFilesFor(dir, name);
  out << "coordinator key pair written:\n"
      << "  secret key:  " << paths.secret_path << " (mode 0600; keep it on the coordinator only)\n"
      << "  public key:  " << keys.public_key.Z85() << "\n"
      << "  fingerprint: " << keys.public_key.Fingerprint() << "\n\n"
      << "In the coordinator's config:\n"
      << "  security: {secret_key_file: " << paths.secret_path
      << ", authorized_clients: <file>}\n"
      << "Give every data owner the public key for their client config (and read them the\n"
      << "fingerprint so they can check it):\n"
      << "  security: {coordinator_public_key: \"" << keys.public_key.Z85() << "\"}\n";
  return OkStatus();
}

Result<std::string> AuthorizedClientsPath(const std::string& file, const std::string& config_path,
                                          const std::vector<std::string>& overrides) {
  if (!file.empty()) return file;
  if (config_path.empty()) {
    return InvalidArgument("name the authorized clients file with --file, or the coordinator's "
                           "config with --config (its security.authorized_clients)");
  }
  FEDLORA_ASSIGN_OR_RETURN(CoordinatorConfig config, LoadCoordinatorConfig(config_path, overrides));
  if (config.security.authorized_clients.empty()) {
    return InvalidArgument(config_path, " sets no security.authorized_clients");
  }
  return config.security.authorized_clients;
}

Status RunClientsAdd(const std::string& path, const std::string& name,
                     const std::string& public_key, const std::string& key_file, bool replace,
                     std::ostream& out) {
  if (public_key.empty() == key_file.empty()) {
    return InvalidArgument("give the client's public key, or its key file with --key-file");
  }
  FEDLORA_ASSIGN_OR_RETURN(crypto::CurvePublicKey key,
                           key_file.empty() ? crypto::ParseCurvePublicKey(public_key, "PUBLIC_KEY")
                                            : crypto::LoadPublicKeyFile(key_file));
  FEDLORA_RETURN_IF_ERROR(AddAuthorizedClient(path, name, key, replace));
  out << (replace ? "enrolled (replacing any earlier key) " : "enrolled ") << name << " (" << key.Fingerprint() << ") in " << path << "\n"
      << "Check the fingerprint with the data owner. A running coordinator admits the key within "
         "a second (or at once on SIGHUP).\n";
  return OkStatus();
}

Status RunClientsRemove(const std::string& path, const std::string& name, std::ostream& out) {
  FEDLORA_RETURN_IF_ERROR(RemoveAuthorizedClient(path, name));
  out << "removed " << name << " from " << path << "\n"
      << "A running coordinator closes its session within a second (or at once on SIGHUP) and "
         "drops its upload of the open round.\n";
  return OkStatus();
}

Status RunClientsList(const std::string& path, std::ostream& out) {
  FEDLORA_ASSIGN_OR_RETURN(AuthorizedClients clients, AuthorizedClients::Load(path));
  std::size_t width = 4;
  for (const AuthorizedClient& c : clients.entries()) width = std::max(width, c.name.size());
  out << std::left << std::setw(static_cast<int>(width)) << "name"
      << "  public key                                fingerprint\n";
  for (const AuthorizedClient& c : clients.entries()) {
    out << std::left << std::setw(static_cast<int>(width)) << c.name << "  " << c.key.Z85() << "  "
        << c.key.Fingerprint() << "\n";
  }
  out << clients.size() << " client name(s) enrolled in " << path << "\n";
  return OkStatus();
}

}  // namespace fedlora::server
