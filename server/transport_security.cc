#include "server/transport_security.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>

#include "common/crypto/random.h"
#include "common/log.h"

namespace fedlora::server {
namespace {

constexpr std::int64_t kDenialLogEveryNs = 60'000'000'000;  // One line a minute per key.
constexpr std::size_t kMaxDenialLogKeys = 10000;           // Bounds memory under a key flood.

std::int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<std::unique_ptr<TransportSecurity>> TransportSecurity::Create(const SecurityConfig& config,
                                                                     const std::string& bind) {
  std::unique_ptr<TransportSecurity> s(new TransportSecurity());
  s->config_ = config;
  s->bind_ = bind;
  const net::SecurityChoice choice{config.mode, bind, !config.secret_key_file.empty(),
                                   config.allow_insecure, "security"};
  FEDLORA_ASSIGN_OR_RETURN(s->mode_, net::ResolveSecurityMode(choice));
  if (!s->curve()) return s;

  if (config.secret_key_file.empty()) {
    return InvalidArgument(
        "security: CURVE (mode ", config.mode, " on ", bind,
        ") needs security.secret_key_file: create the coordinator's key pair with "
        "`fedlora-coordinator keygen --dir keys` and set secret_key_file: keys/coordinator.key_secret");
  }
  if (config.authorized_clients.empty()) {
    return InvalidArgument("security: CURVE needs security.authorized_clients, the file of "
                           "`NAME PUBLIC_KEY` lines naming the clients that may join");
  }
  Result<crypto::CurveKeyPair> keys = crypto::LoadSecretKeyFile(config.secret_key_file);
  if (!keys.ok()) return keys.status().WithContext("security.secret_key_file");
  s->keys_ = std::make_shared<const crypto::CurveKeyPair>(std::move(keys).value());
  s->signature_ = SignatureOf(config.authorized_clients);
  Result<AuthorizedClients> clients = AuthorizedClients::Load(config.authorized_clients);
  if (!clients.ok() && clients.status().code() == StatusCode::kNotFound) {
    // Nobody enrolled yet: start with an empty list; the first `clients add` creates the file,
    // which is then read like any change. (A file that disappears later keeps the old list.)
    clients = AuthorizedClients();
  }
  if (!clients.ok()) return clients.status().WithContext("security.authorized_clients");
  s->clients_ = std::make_shared<const AuthorizedClients>(std::move(clients).value());
  s->zap_domain_ = StrCat("fedlora-", crypto::RandomU64());
  return s;
}

TransportSecurity::~TransportSecurity() {
  zap_ = net::ZapRegistration();  // No handler may run while the members below are destroyed.
}

void TransportSecurity::LogStartup() const {
  if (curve()) {
    LogInfo("security: CURVE on ", bind_, "; coordinator key ", keys_->public_key.Fingerprint(),
            " (public key ", keys_->public_key.Z85(), "), ", enrolled(),
            " client name(s) enrolled in ", config_.authorized_clients);
    if (enrolled() == 0) {
      LogWarn("security: no client is enrolled yet: every connection is refused until "
              "`fedlora-coordinator clients add NAME ...` enrolls one (picked up within a second)");
    }
    return;
  }
  const net::SecurityChoice choice{config_.mode, bind_, false, config_.allow_insecure, "security"};
  if (net::IsInsecureOptOut(choice, mode_)) {
    LogWarn("security: INSECURE: no CURVE on ", bind_,
            ", which other machines can reach (security.allow_insecure: true): tensors travel in "
            "clear text and any peer that reaches the port can join under any name");
  } else {
    LogInfo("security: none (", bind_, " is local to this machine)");
  }
}

Status TransportSecurity::Attach(net::Context& context, net::SocketOptions* options) {
  if (!curve()) return OkStatus();
  FEDLORA_ASSIGN_OR_RETURN(zap_, context.ServeZap(zap_domain_, [this](const net::ZapRequest& r) {
                             return Authenticate(r);
                           }));
  options->curve = net::CurveOptions{keys_, std::nullopt, zap_domain_};
  return OkStatus();
}

net::ZapVerdict TransportSecurity::Authenticate(const net::ZapRequest& request) {
  net::ZapVerdict verdict;
  std::string reason;
  if (request.mechanism != "CURVE" || !request.client_key) {
    reason = StrCat("mechanism ", request.mechanism, " is not CURVE");
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    if (clients_->Allows(*request.client_key)) {
      verdict.allowed = true;
      verdict.user_id = request.client_key->Z85();
      return verdict;
    }
    reason = StrCat("key ", request.client_key->Fingerprint(), " is not enrolled in ",
                    config_.authorized_clients);
  }
  verdict.reason = "client key not authorized";
  denied_.fetch_add(1, std::memory_order_relaxed);
  const std::string who =
      request.client_key ? request.client_key->Z85() : StrCat("mechanism ", request.mechanism);
  std::uint64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (denial_log_.size() >= kMaxDenialLogKeys) denial_log_.clear();
    auto& [last_ns, count] = denial_log_[who];
    const std::int64_t now = SteadyNs();
    if (last_ns != 0 && now - last_ns < kDenialLogEveryNs) {
      ++count;
      return verdict;
    }
    suppressed = count;
    last_ns = now;
    count = 0;
  }
  LogWarn("security: refused a connection from ", request.address.empty() ? "a local peer"
                                                                           : request.address,
          ": ", reason,
          suppressed > 0 ? StrCat(" (and ", suppressed, " more refusals in the last minute)") : "");
  return verdict;
}

TransportSecurity::FileSignature TransportSecurity::SignatureOf(const std::string& path) {
  FileSignature sig;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    sig.device = st.st_dev;
    sig.inode = st.st_ino;
    sig.size = st.st_size;
    sig.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  }
  return sig;
}

KeyListChange TransportSecurity::Reload(bool force) {
  KeyListChange change;
  if (!curve()) return change;
  const FileSignature sig = SignatureOf(config_.authorized_clients);
  if (!force && sig == signature_) return change;
  signature_ = sig;
  Result<AuthorizedClients> loaded = AuthorizedClients::Load(config_.authorized_clients);
  if (!loaded.ok()) {
    change.error = loaded.status();
    return change;
  }
  auto next = std::make_shared<const AuthorizedClients>(std::move(loaded).value());
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, crypto::CurvePublicKey>> before, after;
  for (const AuthorizedClient& c : clients_->entries()) before.emplace_back(c.name, c.key);
  for (const AuthorizedClient& c : next->entries()) after.emplace_back(c.name, c.key);
  std::sort(before.begin(), before.end());
  std::sort(after.begin(), after.end());
  change.reloaded = before != after;
  clients_ = std::move(next);
  return change;
}

std::vector<std::string> TransportSecurity::NamesFor(std::string_view user_id) const {
  Result<crypto::CurvePublicKey> key = crypto::ParseCurvePublicKey(user_id);
  if (!key.ok()) return {};
  std::lock_guard<std::mutex> lock(mu_);
  return clients_->NamesOf(*key);
}

bool TransportSecurity::Allows(std::string_view user_id, std::string_view name) const {
  Result<crypto::CurvePublicKey> key = crypto::ParseCurvePublicKey(user_id);
  if (!key.ok()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  const crypto::CurvePublicKey* enrolled = clients_->KeyOf(name);
  return enrolled != nullptr && *enrolled == *key;
}

std::string TransportSecurity::Describe(std::string_view user_id) {
  Result<crypto::CurvePublicKey> key = crypto::ParseCurvePublicKey(user_id);
  return key.ok() ? StrCat("key ", key->Fingerprint()) : std::string("an unidentified key");
}

std::size_t TransportSecurity::enrolled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return clients_ ? clients_->size() : 0;
}

}  // namespace fedlora::server
