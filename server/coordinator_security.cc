// coordinator_security.cc — the coordinator's admission checks that depend on transport security:
// which key may speak for which client, reloading the enrolment list, revoking sessions, and the
// tickets that bind each result to its task. Runs on the coordinator's loop thread (see
// coordinator_impl.h).
#include <cstring>

#include "common/crypto/random.h"
#include "common/log.h"
#include "server/coordinator_impl.h"

namespace fedlora::server {
namespace {

using wire::ErrorCode;

constexpr std::chrono::milliseconds kKeyFileCheckEvery{1000};

}  // namespace

wire::TaskTicket Coordinator::Impl::NewTicket(std::uint32_t attempt) {
  wire::TaskTicket ticket;
  ticket.attempt = attempt;
  const std::uint64_t halves[2] = {crypto::RandomU64(), crypto::RandomU64()};  // Never all zero.
  std::memcpy(ticket.nonce.data(), halves, ticket.nonce.size());
  return ticket;
}

bool Coordinator::Impl::CheckSender(const std::string& route, const std::string& user_id,
                                    ClientConnection* client, std::uint64_t sequence) {
  if (client != nullptr && client->key == user_id) return true;  // The hot path.
  const std::string key = TransportSecurity::Describe(user_id);
  if (client == nullptr) {
    // A stranger may say Hello if its key is (still) enrolled under some name; HandleHello
    // checks the name. A key revoked after its handshake lands here.
    if (!security_->NamesFor(user_id).empty()) return true;
    ProtocolError(StrCat("connection with ", key), route, sequence, ErrorCode::kNotAuthorized,
                  StrCat(key, " is not enrolled in security.authorized_clients"));
    return false;
  }
  // A session exists only while its key is enrolled under its name (ReloadKeys revokes the
  // others), so a message needs only the session's key; this one came with another.
  const std::string id = client->id;
  ProtocolError(StrCat("client ", id), route, sequence, ErrorCode::kNotAuthorized,
                StrCat(key, " is not the key of '", id, "'s session"));
  Revoke(id, StrCat("a message under its session came with ", key));
  return false;
}

void Coordinator::Impl::ReloadKeys() {
  if (!security_->curve()) return;
  const bool forced = reload_requested_.exchange(false, std::memory_order_acq_rel);
  const Clock::TimePoint now = clock_.Now();
  if (!forced && now - last_key_check_ < kKeyFileCheckEvery) return;
  last_key_check_ = now;
  const KeyListChange change = security_->Reload(forced);
  if (!change.error.ok()) {
    Count([](CoordinatorCounters& c) { ++c.key_reload_errors; });
    LogError("security: keeping the previous list of enrolled clients: ",
             change.error.ToString());
    return;
  }
  if (!change.reloaded) {
    if (forced) LogInfo("security: authorized clients re-read: no change");
    return;
  }
  Count([](CoordinatorCounters& c) { ++c.key_reloads; });
  LogInfo("security: authorized clients reloaded: ", security_->enrolled(), " name(s) enrolled");
  std::vector<std::string> revoked;
  for (const auto& [id, client] : clients_.all()) {
    if (!security_->Allows(client.key, id)) revoked.push_back(id);
  }
  for (const std::string& id : revoked) {
    Revoke(id, StrCat(TransportSecurity::Describe(clients_.FindById(id)->key),
                      " is no longer enrolled as '", id, "' in security.authorized_clients"));
  }
}

void Coordinator::Impl::Revoke(const std::string& id, const std::string& why) {
  ClientConnection* client = clients_.FindById(id);
  if (client == nullptr) return;
  Send(*client, wire::Error{ErrorCode::kNotAuthorized, StrCat("session closed: ", why), 0});
  clients_.Remove(id);
  ++revoked_since_commit_;
  Count([](CoordinatorCounters& c) { ++c.clients_revoked; });
  OnClientGone(id, StrCat("revoked: ", why));

  if (SecureOn()) {
    if (secagg_ && secagg_->active() && secagg_->HasInput(id)) {
      secagg_->Abort(StrCat("the input of revoked client ", id, " is in the sum"));
    }
    if (round_.run().accepted.contains(id)) {
      ++dropped_since_commit_;
      Count([](CoordinatorCounters& c) { ++c.uploads_dropped; });
      DiscardSecureSum(id);
    }
    return;
  }
  if (!round_.DropUpload(id)) return;
  const std::uint64_t round = round_.run().round;
  if (Status s = store_->DropPendingUpload(round, id); !s.ok()) {
    // A restart would restore the upload of a revoked key: stop rather than risk it.
    Fatal(s.WithContext(StrCat("dropping the upload of revoked client ", id)));
    return;
  }
  ++dropped_since_commit_;
  Count([](CoordinatorCounters& c) { ++c.uploads_dropped; });
  LogWarn("round ", round, ": the accepted upload of ", id,
          " is dropped from aggregation (key revoked)");
  if (round_.phase() == RoundPhase::kEval) {
    // The candidate under evaluation includes it: aggregate again without it (or, below the
    // quorum, ask more clients), as if the round's uploads had just come in.
    round_.ReopenFit(clock_.Now());
    LogWarn("round ", round, ": discarding the aggregate that included ", id,
            "; aggregating the remaining ", round_.run().accepted.size(), " upload(s) again");
  }
  // Take it out of the running sums: fold the remaining uploads again from their files.
  RebuildAccumulator();
}

}  // namespace fedlora::server
