#include "common/secagg/client_protocol.h"

#include <algorithm>
#include <set>

#include "common/crypto/random.h"
#include "common/crypto/sha256.h"
#include "common/log.h"
#include "common/secagg/protocol.h"

namespace fedlora::secagg {
namespace {

crypto::ShamirSecret AsSecret(std::span<const std::uint8_t, 32> bytes) {
  crypto::ShamirSecret s{};
  std::copy(bytes.begin(), bytes.end(), s.begin());
  return s;
}

}  // namespace

ClientProtocol::ClientProtocol(std::uint64_t round, std::uint32_t attempt, Modulus modulus)
    : round_(round),
      attempt_(attempt),
      modulus_(modulus),
      c_(crypto::GenerateAgreementKeyPair()),
      s_(crypto::GenerateAgreementKeyPair()) {
  crypto::FillRandom(std::as_writable_bytes(std::span(seed_)));
}

ClientProtocol::~ClientProtocol() {
  crypto::SecureWipe(c_.secret_key);
  crypto::SecureWipe(s_.secret_key);
  crypto::SecureWipe(seed_);
  for (auto* shares : {&key_shares_, &seed_shares_}) {
    for (auto& [index, share] : *shares) crypto::SecureWipe(share.y);
  }
}

wire::SecAggKeys ClientProtocol::Keys() const {
  wire::SecAggKeys keys;
  keys.c_public = c_.public_key;
  keys.s_public = s_.public_key;
  const crypto::Digest digest = crypto::Sha256(std::as_bytes(std::span(seed_)));
  std::transform(digest.begin(), digest.end(), keys.seed_digest.begin(),
                 [](std::byte b) { return static_cast<std::uint8_t>(b); });
  return keys;
}

Result<wire::SecAggShares> ClientProtocol::OnRoster(const wire::SecAggRoster& roster) {
  if (roster_) return InvalidArgument("a second roster for the same attempt");
  const std::vector<wire::SecAggMember>& members = roster.members;
  std::set<std::uint32_t> indices;
  const wire::SecAggMember* self = nullptr;
  for (const wire::SecAggMember& m : members) {
    if (m.index == 0 || !indices.insert(m.index).second) {
      return InvalidArgument("roster: member index ", m.index, " is 0 or appears twice");
    }
    if (m.index == roster.own_index) self = &m;
  }
  if (self == nullptr || self->c_public != c_.public_key || self->s_public != s_.public_key) {
    return InvalidArgument("roster: it does not carry this client's own keys at index ",
                           roster.own_index);
  }
  if (roster.threshold < 2 || roster.threshold > members.size()) {
    return InvalidArgument("roster: threshold ", roster.threshold, " is not in 2..", members.size(),
                           " (its holders)");
  }
  if (!std::is_sorted(members.begin(), members.end(),
                      [](const auto& a, const auto& b) { return a.index < b.index; })) {
    return InvalidArgument("roster: members are not sorted by index");
  }
  const auto n = static_cast<std::uint32_t>(members.size());
  FEDLORA_ASSIGN_OR_RETURN(std::vector<crypto::ShamirShare> key_split,
                           crypto::ShamirSplit(AsSecret(s_.secret_key), roster.threshold, n));
  FEDLORA_ASSIGN_OR_RETURN(std::vector<crypto::ShamirShare> seed_split,
                           crypto::ShamirSplit(AsSecret(seed_), roster.threshold, n));
  wire::SecAggShares out;
  for (std::uint32_t j = 0; j < n; ++j) {
    const wire::SecAggMember& m = members[j];
    if (m.index == roster.own_index) {
      key_shares_[m.index] = key_split[j];
      seed_shares_[m.index] = seed_split[j];
      continue;
    }
    FEDLORA_ASSIGN_OR_RETURN(crypto::Seed key, crypto::AgreeSeed(c_.secret_key, m.c_public,
                                                                 ShareContext(round_, attempt_)));
    const SharePair pair{roster.own_index, m.index, key_split[j], seed_split[j]};
    out.shares.push_back({roster.own_index, m.index, SealSharePair(key, pair, round_, attempt_)});
    crypto::SecureWipe(key);
  }
  for (auto& share : key_split) crypto::SecureWipe(share.y);
  for (auto& share : seed_split) crypto::SecureWipe(share.y);
  own_ = roster.own_index;
  roster_ = roster;
  return out;
}

Status ClientProtocol::OnShares(const wire::SecAggShares& routed) {
  if (!roster_) return FailedPrecondition("shares arrived before the roster");
  if (routed_) return InvalidArgument("shares were already delivered for this attempt");
  std::map<std::uint32_t, const wire::SecAggMember*> by_index;
  for (const wire::SecAggMember& m : roster_->members) by_index[m.index] = &m;
  std::set<std::uint32_t> seen;
  for (const wire::SecAggSealed& sealed : routed.shares) {
    const auto member = by_index.find(sealed.from);
    if (sealed.to != own_ || sealed.from == own_ || member == by_index.end() ||
        !seen.insert(sealed.from).second) {
      return InvalidArgument("routed share from member ", sealed.from, " to ", sealed.to,
                             " is not from a neighbour to this client, or came twice");
    }
    // The member shared: it masks with this client, so this client masks with it, whether or
    // not its share opens here.
    sharers_[sealed.from] = member->second->s_public;
    FEDLORA_ASSIGN_OR_RETURN(
        crypto::Seed key,
        crypto::AgreeSeed(c_.secret_key, member->second->c_public, ShareContext(round_, attempt_)));
    Result<SharePair> pair = OpenSharePair(key, sealed.sealed, sealed.from, own_, round_, attempt_);
    crypto::SecureWipe(key);
    if (!pair.ok()) {
      LogWarn("secure aggregation round ", round_, ": ", pair.status().message(),
              " (its share is missing from this client's reveal)");
      continue;
    }
    key_shares_[sealed.from] = pair->key;
    seed_shares_[sealed.from] = pair->seed;
    crypto::SecureWipe(pair->key.y);
    crypto::SecureWipe(pair->seed.y);
  }
  routed_ = true;
  return OkStatus();
}

Result<std::vector<std::uint32_t>> ClientProtocol::Mask(std::vector<std::uint32_t> input) const {
  if (!routed_) return FailedPrecondition("masking before the neighbours' shares arrived");
  for (std::uint32_t& w : input) w &= modulus_.mask();
  ApplyMask(input, seed_, modulus_, /*add=*/true);
  for (const auto& [index, s_public] : sharers_) {
    FEDLORA_ASSIGN_OR_RETURN(
        crypto::Seed pair_seed,
        crypto::AgreeSeed(s_.secret_key, s_public, MaskContext(round_, attempt_)));
    ApplyPairwiseMask(input, pair_seed, own_, index, modulus_, /*remove=*/false);
    crypto::SecureWipe(pair_seed);
  }
  return input;
}

Result<wire::SecAggReveal> ClientProtocol::OnUnmask(const wire::SecAggUnmask& unmask) {
  if (!routed_) return FailedPrecondition("unmask before the shares stage");
  if (revealed_) return InvalidArgument("a second unmask request for the same attempt");
  const std::set<std::uint32_t> survivors(unmask.survivors.begin(), unmask.survivors.end());
  const std::set<std::uint32_t> dropped(unmask.dropped.begin(), unmask.dropped.end());
  for (std::uint32_t d : dropped) {
    if (survivors.contains(d)) {
      return InvalidArgument("unmask names member ", d, " both survivor and dropped");
    }
  }
  if (!survivors.contains(own_)) {
    return InvalidArgument("unmask does not count this client (member ", own_,
                           ") among the survivors");
  }
  std::uint32_t holders_alive = 0;
  for (const wire::SecAggMember& m : roster_->members) {
    if (survivors.contains(m.index)) ++holders_alive;
  }
  if (holders_alive < roster_->threshold) {
    return InvalidArgument("unmask leaves ", holders_alive, " of this client's holders among the ",
                           "survivors, below the threshold ", roster_->threshold);
  }
  for (const auto& [index, key] : sharers_) {
    if (!survivors.contains(index) && !dropped.contains(index)) {
      return InvalidArgument("unmask says nothing of member ", index,
                             ", which shared keys with this client");
    }
  }
  revealed_ = true;
  wire::SecAggReveal reveal;
  for (const auto& [owner, share] : seed_shares_) {
    if (survivors.contains(owner)) reveal.shares.push_back({owner, share.x, share.y});
  }
  for (const auto& [owner, share] : key_shares_) {
    if (dropped.contains(owner) && owner != own_) {
      reveal.shares.push_back({owner, share.x, share.y});
    }
  }
  return reveal;
}

}  // namespace fedlora::secagg
