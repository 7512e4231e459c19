// secagg_attempt.cc — the coordinator's side of one SecAgg+ attempt (secagg_attempt.h).
#include "server/secagg_attempt.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "common/crypto/random.h"
#include "common/crypto/sha256.h"
#include "common/log.h"
#include "common/secagg/neighbours.h"
#include "common/secagg/protocol.h"

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

double MillisBetween(Clock::TimePoint a, Clock::TimePoint b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

std::string_view SecAggStageName(SecAggStage stage) {
  switch (stage) {
    case SecAggStage::kKeys:
      return "keys";
    case SecAggStage::kShares:
      return "shares";
    case SecAggStage::kInput:
      return "input";
    case SecAggStage::kUnmask:
      return "unmask";
    case SecAggStage::kDone:
      return "done";
    case SecAggStage::kFailed:
      return "failed";
  }
  return "?";
}

SecAggAttempt::SecAggAttempt(std::uint64_t round, std::uint32_t attempt, wire::SecAggParams params,
                             SecAggSettings settings,
                             const std::set<std::string, std::less<>>& members,
                             std::uint32_t min_members, Clock::TimePoint now,
                             Clock::TimePoint input_deadline)
    : round_(round),
      attempt_(attempt),
      params_(std::move(params)),
      settings_(settings),
      modulus_(secagg::Modulus::Bits(params_.modulus_bits).value()),
      length_(secagg::SecureVectorLength(params_).value()),
      min_members_(std::max<std::uint32_t>(min_members, 2)),
      input_deadline_(input_deadline),
      stage_started_(now),
      deadline_(now + settings_.stage_timeout) {
  std::uint32_t next = 1;
  for (const std::string& id : members) {
    index_[id] = next;
    members_[next].id = id;
    ++next;
  }
  report_.tasked = static_cast<std::uint32_t>(members.size());
  sum_words_.assign(static_cast<std::size_t>(length_), 0);
}

SecAggAttempt::Member* SecAggAttempt::Find(std::string_view id) {
  const auto it = index_.find(id);
  return it == index_.end() ? nullptr : &members_.at(it->second);
}

Status SecAggAttempt::Refuse(const std::string& id, std::string message) {
  Exclude(id, message);
  return Status(StatusCode::kInvalidArgument, std::move(message),
                static_cast<std::uint32_t>(ErrorCode::kSecAggMismatch));
}

void SecAggAttempt::Exclude(const std::string& id, std::string_view why) {
  Member* m = Find(id);
  if (m == nullptr || m->excluded || !active()) return;
  m->excluded = true;
  LogWarn("round ", round_, " secure aggregation (", SecAggStageName(stage_), " stage): client ",
          id, " is out of this attempt: ", why);
}

void SecAggAttempt::Fail(std::string why) {
  stage_ = SecAggStage::kFailed;
  failure_ = std::move(why);
  std::fill(sum_words_.begin(), sum_words_.end(), 0);
  LogWarn("round ", round_, " attempt ", attempt_, ": secure aggregation failed: ", failure_);
}

std::set<std::string, std::less<>> SecAggAttempt::survivors() const {
  std::set<std::string, std::less<>> out;
  for (const auto& [index, m] : members_) {
    if (m.masked) out.insert(m.id);
  }
  return out;
}

bool SecAggAttempt::HasInput(std::string_view id) const {
  const auto it = index_.find(id);
  return it != index_.end() && members_.at(it->second).masked;
}

template <typename Pred>
std::uint32_t SecAggAttempt::CountHolders(std::uint32_t m, Pred in) const {
  const Member& member = members_.at(m);
  std::uint32_t n = in(m) ? 1 : 0;
  for (std::uint32_t v : member.neighbours) n += in(v) ? 1 : 0;
  return n;
}

std::uint32_t SecAggAttempt::PositionAmongHolders(std::uint32_t owner, std::uint32_t holder) const {
  std::vector<std::uint32_t> holders = members_.at(owner).neighbours;
  holders.push_back(owner);
  std::sort(holders.begin(), holders.end());
  const auto it = std::find(holders.begin(), holders.end(), holder);
  return it == holders.end() ? 0 : static_cast<std::uint32_t>(it - holders.begin()) + 1;
}

// ---- the clients' messages -----------------------------------------------------------------

Status SecAggAttempt::OnKeys(const std::string& id, const wire::SecAggKeys& keys) {
  Member* m = Find(id);
  if (m == nullptr || m->excluded) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat("client is not in round ", round_, "'s secure-aggregation attempt"),
                  static_cast<std::uint32_t>(ErrorCode::kSecAggMismatch));
  }
  if (stage_ != SecAggStage::kKeys || m->keys) {
    return Refuse(id, StrCat("keys arrived in the ", SecAggStageName(stage_), " stage",
                             m->keys ? " (a second time)" : ""));
  }
  for (const auto& [index, other] : members_) {
    if (other.keys &&
        (other.keys->c_public == keys.c_public || other.keys->s_public == keys.s_public)) {
      return Refuse(id, StrCat("its public keys repeat those of member ", index));
    }
  }
  if (keys.c_public == keys.s_public) return Refuse(id, "its two public keys are the same");
  m->keys = keys;
  return OkStatus();
}

Status SecAggAttempt::OnShares(const std::string& id, const wire::SecAggShares& shares) {
  Member* m = Find(id);
  if (m == nullptr || m->excluded || !m->keys) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat("client is not on round ", round_, "'s secure-aggregation roster"),
                  static_cast<std::uint32_t>(ErrorCode::kSecAggMismatch));
  }
  if (stage_ != SecAggStage::kShares || m->shared) {
    return Refuse(id, StrCat("shares arrived in the ", SecAggStageName(stage_), " stage",
                             m->shared ? " (a second time)" : ""));
  }
  const std::uint32_t own = index_.at(id);
  std::map<std::uint32_t, std::vector<std::uint8_t>> sealed_to;
  for (const wire::SecAggSealed& s : shares.shares) {
    if (s.from != own) {
      return Refuse(id, StrCat("a share says it is from member ", s.from, ", not ", own));
    }
    if (!std::binary_search(m->neighbours.begin(), m->neighbours.end(), s.to)) {
      return Refuse(id,
                    StrCat("a share is addressed to member ", s.to, ", who is not its neighbour"));
    }
    if (s.sealed.size() != secagg::kSealedShareBytes) {
      return Refuse(id, StrCat("its share for member ", s.to, " has ", s.sealed.size(),
                               " bytes, not ", secagg::kSealedShareBytes));
    }
    if (!sealed_to.emplace(s.to, s.sealed).second) {
      return Refuse(id, StrCat("two shares are addressed to member ", s.to));
    }
  }
  if (sealed_to.size() != m->neighbours.size()) {
    return Refuse(id, StrCat("it sent shares to ", sealed_to.size(), " of its ",
                             m->neighbours.size(), " neighbours"));
  }
  m->sealed_to = std::move(sealed_to);
  m->shared = true;
  return OkStatus();
}

Status SecAggAttempt::OnMaskedInput(const std::string& id, std::span<const std::uint32_t> words,
                                    std::uint64_t clipped) {
  Member* m = Find(id);
  if (m == nullptr || m->excluded || !m->shared) {
    return Status(StatusCode::kInvalidArgument,
                  StrCat("client shared no keys in round ", round_,
                         "'s secure-aggregation attempt: its input cannot be unmasked"),
                  static_cast<std::uint32_t>(ErrorCode::kSecAggMismatch));
  }
  if (stage_ != SecAggStage::kInput || m->masked) {
    return Refuse(id, StrCat("a masked input arrived in the ", SecAggStageName(stage_), " stage",
                             m->masked ? " (a second time)" : ""));
  }
  if (words.size() != length_) {
    return Refuse(
        id, StrCat("its masked vector has ", words.size(), " words; the layout has ", length_));
  }
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (words[i] > modulus_.mask()) {
      return Refuse(id, StrCat("word ", i, " of its masked vector (", words[i],
                               ") is not below the modulus 2^", modulus_.bits()));
    }
  }
  FEDLORA_CHECK(secagg::AddInto(sum_words_, words, modulus_).ok());
  m->masked = true;
  m->clipped = clipped;
  return OkStatus();
}

Status SecAggAttempt::OnReveal(const std::string& id, const wire::SecAggReveal& reveal) {
  Member* m = Find(id);
  if (m == nullptr || m->excluded || !m->masked) {
    return Status(
        StatusCode::kInvalidArgument,
        StrCat("client is not a survivor of round ", round_, "'s secure-aggregation attempt"),
        static_cast<std::uint32_t>(ErrorCode::kSecAggMismatch));
  }
  if (stage_ != SecAggStage::kUnmask || m->revealed) {
    return Refuse(id, StrCat("a reveal arrived in the ", SecAggStageName(stage_), " stage",
                             m->revealed ? " (a second time)" : ""));
  }
  const std::uint32_t own = index_.at(id);
  std::set<std::uint32_t> owners;
  for (const wire::SecAggShare& s : reveal.shares) {
    const auto owner = members_.find(s.owner);
    if (owner == members_.end() || !owner->second.shared || !owners.insert(s.owner).second) {
      return Refuse(
          id, StrCat("it reveals a share of member ", s.owner, ", who shared no keys, or twice"));
    }
    const std::uint32_t position = PositionAmongHolders(s.owner, own);
    if (position == 0 || s.x != position) {
      return Refuse(id, StrCat("its share of member ", s.owner, " has x = ", s.x,
                               ", not its place among that member's holders (", position, ")"));
    }
    if (s.owner == own && !owner->second.masked) {
      return Refuse(id, "it reveals a share of its own masking key");
    }
  }
  for (const wire::SecAggShare& s : reveal.shares) {
    Member& owner = members_.at(s.owner);
    crypto::ShamirShare share{s.x, s.y};
    (owner.masked ? owner.seed_shares : owner.key_shares)[own] = share;
  }
  m->revealed = true;
  return OkStatus();
}

// ---- stages --------------------------------------------------------------------------------

bool SecAggAttempt::StageComplete() const {
  for (const auto& [index, m] : members_) {
    if (m.excluded) continue;
    switch (stage_) {
      case SecAggStage::kKeys:
        if (!m.keys) return false;
        break;
      case SecAggStage::kShares:
        if (m.keys && !m.neighbours.empty() && !m.shared) return false;
        break;
      case SecAggStage::kInput:
        if (m.shared && !m.masked) return false;
        break;
      case SecAggStage::kUnmask:
        if (m.masked && !m.revealed) return false;
        break;
      default:
        return true;
    }
  }
  return true;
}

std::vector<SecAggAttempt::Outgoing> SecAggAttempt::Step(Clock::TimePoint now) {
  if (!active() || (!StageComplete() && now < deadline_)) return {};
  const int stage = static_cast<int>(stage_);
  report_.stage_ms[stage] = MillisBetween(stage_started_, now);
  stage_started_ = now;
  switch (stage_) {
    case SecAggStage::kKeys:
      return EndKeys(now);
    case SecAggStage::kShares:
      return EndShares(now);
    case SecAggStage::kInput:
      return EndInput(now);
    case SecAggStage::kUnmask:
      EndUnmask(now);
      return {};
    default:
      return {};
  }
}

std::vector<SecAggAttempt::Outgoing> SecAggAttempt::EndKeys(Clock::TimePoint now) {
  std::vector<std::uint32_t> keyed;  // U1, by index.
  for (const auto& [index, m] : members_) {
    if (m.keys && !m.excluded) keyed.push_back(index);
  }
  const auto n = static_cast<std::uint32_t>(keyed.size());
  report_.keyed = n;
  if (n < min_members_) {
    Fail(StrCat(n, " of ", members_.size(), " clients sent keys; ", min_members_, " needed"));
    return {};
  }
  std::uint32_t k = settings_.degree > 0 ? settings_.degree : secagg::DefaultDegree(n);
  std::uint32_t t = settings_.threshold;
  if (t > n) {
    Fail(
        StrCat("secure_aggregation.threshold ", t, " is above the ", n, " clients that sent keys"));
    return {};
  }
  if (t > 0 && t > k + 1) k = t - 1;  // More neighbours, never a lower threshold.
  if (k >= n - 1) {
    k = n - 1;
  } else if (k % 2 == 1) {
    ++k;  // The Harary graph below n - 1 needs an even degree.
  }
  if (t == 0) t = std::max<std::uint32_t>(2, (k + 1) / 2 + 1);  // A majority of the holders.
  threshold_ = t;
  report_.threshold = t;
  report_.degree = k;
  if (n < std::max(min_members_, t)) {
    Fail(StrCat(n, " clients sent keys; the threshold needs ", t));
    return {};
  }
  crypto::Seed graph_seed{};
  crypto::FillRandom(std::as_writable_bytes(std::span(graph_seed)));
  Result<std::vector<std::vector<std::uint32_t>>> graph = secagg::NeighbourGraph(n, k, graph_seed);
  if (!graph.ok()) {
    Fail(StrCat("no neighbourhood graph: ", graph.status().message()));
    return {};
  }
  for (std::uint32_t p = 0; p < n; ++p) {
    Member& m = members_.at(keyed[p]);
    for (std::uint32_t q : (*graph)[p]) m.neighbours.push_back(keyed[q]);
    std::sort(m.neighbours.begin(), m.neighbours.end());
  }
  std::vector<Outgoing> out;
  for (std::uint32_t index : keyed) {
    const Member& m = members_.at(index);
    wire::SecAggRoster roster;
    roster.own_index = index;
    roster.threshold = t;
    std::vector<std::uint32_t> holders = m.neighbours;
    holders.push_back(index);
    std::sort(holders.begin(), holders.end());
    for (std::uint32_t h : holders) {
      const Member& holder = members_.at(h);
      roster.members.push_back({h, holder.id, holder.keys->c_public, holder.keys->s_public});
    }
    out.push_back({m.id, std::move(roster)});
  }
  stage_ = SecAggStage::kShares;
  deadline_ = now + settings_.stage_timeout;
  return out;
}

std::vector<SecAggAttempt::Outgoing> SecAggAttempt::EndShares(Clock::TimePoint now) {
  // Leave out, until none is left to, every sharer with fewer than the threshold of holders
  // among the sharers: its secrets could not be rebuilt.
  for (bool changed = true; changed;) {
    changed = false;
    for (auto& [index, m] : members_) {
      if (!m.shared) continue;
      const std::uint32_t holders =
          CountHolders(index, [&](std::uint32_t v) { return members_.at(v).shared; });
      if (holders < threshold_) {
        m.shared = false;
        changed = true;
        LogWarn("round ", round_, " secure aggregation: client ", m.id, " is left out: ", holders,
                " of its holders shared keys, below the threshold ", threshold_);
      }
    }
  }
  std::uint32_t shared = 0;
  for (const auto& [index, m] : members_) shared += m.shared ? 1 : 0;
  report_.shared = shared;
  if (shared < std::max(min_members_, threshold_)) {
    Fail(StrCat(shared, " of ", report_.keyed, " clients shared keys; ",
                std::max(min_members_, threshold_), " needed"));
    return {};
  }
  std::vector<Outgoing> out;
  for (const auto& [index, m] : members_) {
    if (!m.shared || m.excluded) continue;
    wire::SecAggShares routed;
    for (std::uint32_t v : m.neighbours) {
      const Member& from = members_.at(v);
      if (from.shared) routed.shares.push_back({v, index, from.sealed_to.at(index)});
    }
    out.push_back({m.id, std::move(routed)});
  }
  stage_ = SecAggStage::kInput;
  // The round's upload deadline; if the key stages ran past it, one more stage's time.
  deadline_ = input_deadline_ > now ? input_deadline_ : now + settings_.stage_timeout;
  return out;
}

std::vector<SecAggAttempt::Outgoing> SecAggAttempt::EndInput(Clock::TimePoint now) {
  wire::SecAggUnmask unmask;
  for (const auto& [index, m] : members_) {
    if (m.masked) unmask.survivors.push_back(index);
    if (m.shared && !m.masked) unmask.dropped.push_back(index);
  }
  const auto survivors = static_cast<std::uint32_t>(unmask.survivors.size());
  report_.masked = survivors;
  if (survivors < std::max(min_members_, threshold_)) {
    Fail(StrCat(survivors, " of ", report_.shared, " clients sent masked inputs; ",
                std::max(min_members_, threshold_), " needed"));
    return {};
  }
  const auto alive = [&](std::uint32_t v) { return members_.at(v).masked; };
  for (const auto& [index, m] : members_) {
    if (m.shared && CountHolders(index, alive) < threshold_) {
      Fail(StrCat("only ", CountHolders(index, alive), " holders of client ", m.id,
                  "'s shares survived, below the threshold ", threshold_, ": its ",
                  m.masked ? "self mask" : "pairwise masks", " cannot be removed"));
      return {};
    }
  }
  std::vector<Outgoing> out;
  for (std::uint32_t index : unmask.survivors) {
    const Member& m = members_.at(index);
    if (!m.excluded) out.push_back({m.id, unmask});
  }
  stage_ = SecAggStage::kUnmask;
  deadline_ = now + settings_.stage_timeout;
  return out;
}

Result<crypto::ShamirSecret> SecAggAttempt::Rebuild(
    std::uint32_t owner, const std::map<std::uint32_t, crypto::ShamirShare>& shares,
    const std::function<bool(const crypto::ShamirSecret&)>& check, std::string_view what) {
  const std::string& id = members_.at(owner).id;
  if (shares.size() < threshold_) {
    return FailedPrecondition(shares.size(), " shares of client ", id, "'s ", what,
                              " were revealed; ", threshold_, " needed");
  }
  std::vector<crypto::ShamirShare> all;
  for (const auto& [holder, share] : shares) all.push_back(share);
  // The threshold's worth first (interpolation is quadratic in the shares), then all of them.
  const std::vector<crypto::ShamirShare> first(all.begin(), all.begin() + threshold_);
  if (Result<crypto::ShamirSecret> secret = crypto::ShamirReconstruct(first);
      secret.ok() && check(*secret)) {
    return secret;
  }
  Result<crypto::ShamirSecret> secret = crypto::ShamirReconstruct(all);
  if (secret.ok() && check(*secret)) return secret;
  if (shares.size() > threshold_) {  // One bad share among spares: find it by leaving it out.
    for (const auto& [holder, bad] : shares) {
      std::vector<crypto::ShamirShare> rest;
      for (const auto& [h, s] : shares) {
        if (h != holder) rest.push_back(s);
      }
      Result<crypto::ShamirSecret> again = crypto::ShamirReconstruct(rest);
      if (again.ok() && check(*again)) {
        LogWarn("round ", round_, " secure aggregation: client ", members_.at(holder).id,
                " revealed a bad share of client ", id, "'s ", what, " (left out)");
        return again;
      }
    }
  }
  return DataLoss("the revealed shares of client ", id, "'s ", what,
                  " do not rebuild it (a holder revealed a bad share)");
}

void SecAggAttempt::EndUnmask(Clock::TimePoint now) {
  const auto started = std::chrono::steady_clock::now();
  std::uint32_t revealed = 0;
  for (const auto& [index, m] : members_) revealed += m.revealed ? 1 : 0;
  report_.revealed = revealed;
  const std::string context = secagg::MaskContext(round_, attempt_);
  for (auto& [index, m] : members_) {
    if (!m.shared) continue;
    if (m.masked) {  // A survivor: take out its self mask.
      const std::array<std::uint8_t, 32>& want = m.keys->seed_digest;
      Result<crypto::ShamirSecret> seed = Rebuild(
          index, m.seed_shares,
          [&](const crypto::ShamirSecret& s) {
            const crypto::Digest got = crypto::Sha256(std::as_bytes(std::span(s)));
            return std::memcmp(got.data(), want.data(), want.size()) == 0;
          },
          "self-mask seed");
      if (!seed.ok()) {
        Fail(std::string(seed.status().message()));
        return;
      }
      secagg::ApplyMask(sum_words_, *seed, modulus_, /*add=*/false);
      crypto::SecureWipe(*seed);
      continue;
    }
    // Dropped after sharing: take out the pairwise masks its surviving neighbours added.
    Result<crypto::ShamirSecret> key = Rebuild(
        index, m.key_shares,
        [&](const crypto::ShamirSecret& s) {
          const Result<crypto::X25519Key> pub = secagg::PublicKeyOf(s);
          return pub.ok() && *pub == m.keys->s_public;
        },
        "masking key");
    if (!key.ok()) {
      Fail(std::string(key.status().message()));
      return;
    }
    for (std::uint32_t v : m.neighbours) {
      const Member& survivor = members_.at(v);
      if (!survivor.masked) continue;
      Result<crypto::Seed> seed = crypto::AgreeSeed(*key, survivor.keys->s_public, context);
      if (!seed.ok()) {
        Fail(StrCat("rebuilding the mask between clients ", m.id, " and ", survivor.id, ": ",
                    seed.status().message()));
        return;
      }
      secagg::ApplyPairwiseMask(sum_words_, *seed, v, index, modulus_, /*remove=*/true);
      crypto::SecureWipe(*seed);
    }
    crypto::SecureWipe(*key);
  }
  Result<secagg::SecureSum> sum = secagg::DecodeSecureSum(params_, sum_words_, report_.masked);
  if (!sum.ok()) {
    Fail(std::string(sum.status().message()));
    return;
  }
  sum_ = std::move(sum).value();
  for (const auto& [index, m] : members_) {
    if (!m.masked) continue;
    report_.clipped += m.clipped;
    if (m.clipped > 0) report_.clipped_by[m.id] = m.clipped;
  }
  report_.unmask_compute_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  (void)now;
  stage_ = SecAggStage::kDone;
}

}  // namespace fedlora::server
