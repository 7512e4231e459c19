// secagg_attempt.h — the coordinator's side of one SecAgg+ attempt of a round (issue 13; Bell et
// al., CCS 2020), as a state machine that knows nothing of sockets: the coordinator feeds it the
// clients' messages (On*) and sends what Step returns. Stages, each with its deadline, each going
// on with the members that answered:
//
//   kKeys    every tasked client sends two public keys; at the stage's end (all answered, or the
//            deadline) the members that did (U1) get their roster: index, threshold, neighbours
//            on a k-regular graph (SecAgg+; the complete graph when small).
//   kShares  each member of U1 sends one sealed share pair per neighbour; members whose holders
//            among the sharers fall below the threshold are left out (so every member left can be
//            unmasked), and each of the rest (U2) gets the pairs sealed to it.
//   kInput   members of U2 send their masked vectors (an Update), summed mod 2^m as they arrive
//            and never kept; the stage ends at the round's upload deadline or when all did (U3).
//   kUnmask  members of U3 learn who survived and who dropped, and reveal their shares of the
//            survivors' seeds and the dropped members' masking keys; the coordinator rebuilds
//            those (checking each against its digest or public key), removes the self masks and
//            the pairwise masks left by the dropped, and decodes the sum (kDone).
//
// The attempt fails (kFailed, with the reason) when a stage ends with fewer members than it
// needs: max(min_members, threshold), and enough holders for every member still counted. The
// round then retries like any failed quorum. A member that sends anything malformed (a share of
// the wrong size, a vector of another length, words beyond the modulus, a message out of stage)
// is refused with SECAGG_MISMATCH and excluded; the others go on.
//
// Thread-compatible: owned by the coordinator's loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/crypto/key_agreement.h"
#include "common/crypto/shamir.h"
#include "common/secagg/masking.h"
#include "common/secagg/secure_input.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::server {

struct SecAggSettings {
  std::uint32_t threshold = 0;  // Shares needed to rebuild a secret; 0: a majority of holders.
  std::uint32_t degree = 0;     // Neighbours per member; 0: secagg::DefaultDegree(n).
  std::chrono::milliseconds stage_timeout{30000};  // The keys, shares and unmask stages.
};

enum class SecAggStage { kKeys, kShares, kInput, kUnmask, kDone, kFailed };
std::string_view SecAggStageName(SecAggStage stage);

// What one attempt did, for the round's metrics.
struct SecAggReport {
  std::uint32_t tasked = 0, keyed = 0, shared = 0, masked = 0, revealed = 0;
  std::uint32_t threshold = 0, degree = 0;
  std::uint64_t clipped = 0;  // Values the survivors reported clipped.
  std::map<std::string, std::uint64_t, std::less<>> clipped_by;  // Survivors with clipped > 0.
  // Milliseconds each stage took (keys, shares, input, unmask), and the unmasking computation.
  double stage_ms[4] = {0, 0, 0, 0};
  double unmask_compute_ms = 0;
};

class SecAggAttempt {
 public:
  using StageMessage = decltype(wire::SecAgg::stage);
  struct Outgoing {
    std::string to;
    StageMessage stage;
  };

  // `members`: the clients tasked in this attempt (indices 1..n in id order). The input stage
  // ends at `input_deadline`; at least `min_members` inputs are needed.
  SecAggAttempt(std::uint64_t round, std::uint32_t attempt, wire::SecAggParams params,
                SecAggSettings settings, const std::set<std::string, std::less<>>& members,
                std::uint32_t min_members, Clock::TimePoint now, Clock::TimePoint input_deadline);

  std::uint64_t round() const { return round_; }
  std::uint32_t attempt() const { return attempt_; }
  SecAggStage stage() const { return stage_; }
  bool active() const { return stage_ != SecAggStage::kDone && stage_ != SecAggStage::kFailed; }
  const std::string& failure() const { return failure_; }
  const wire::SecAggParams& params() const { return params_; }
  const SecAggReport& report() const { return report_; }
  bool IsMember(std::string_view id) const { return index_.contains(id); }

  // The clients' messages. A refusal (SECAGG_MISMATCH in its detail) excludes the sender.
  Status OnKeys(const std::string& id, const wire::SecAggKeys& keys);
  Status OnShares(const std::string& id, const wire::SecAggShares& shares);
  // The masked vector of an Update that passed the upload checks, with the count of values the
  // client clipped.
  Status OnMaskedInput(const std::string& id, std::span<const std::uint32_t> words,
                       std::uint64_t clipped);
  Status OnReveal(const std::string& id, const wire::SecAggReveal& reveal);
  // `id` left, or was refused for something else: nothing more is awaited from it.
  void Exclude(const std::string& id, std::string_view why);
  // Ends the attempt as failed (an input in the sum must not count: its key was revoked).
  void Abort(std::string why) {
    if (active()) Fail(std::move(why));
  }

  // Ends the stage when everybody expected answered or its deadline passed, and returns the
  // messages of the next stage. Call after every event and on timers.
  std::vector<Outgoing> Step(Clock::TimePoint now);
  Clock::TimePoint deadline() const { return deadline_; }

  // kDone: the sum of the survivors' inputs, and who they are.
  const secagg::SecureSum& sum() const { return *sum_; }
  std::set<std::string, std::less<>> survivors() const;
  // The members whose vectors are in the sum (U3), so far.
  bool HasInput(std::string_view id) const;

 private:
  struct Member {
    std::string id;
    std::optional<wire::SecAggKeys> keys;
    std::vector<std::uint32_t> neighbours;  // Indices, sorted (the roster, without itself).
    std::map<std::uint32_t, std::vector<std::uint8_t>> sealed_to;  // Its pairs, by recipient.
    bool shared = false, masked = false, revealed = false, excluded = false;
    std::uint64_t clipped = 0;
    // Shares revealed of this member's secrets: holder index -> share.
    std::map<std::uint32_t, crypto::ShamirShare> seed_shares, key_shares;
  };
  Status Refuse(const std::string& id, std::string message);
  Member* Find(std::string_view id);
  void Fail(std::string why);
  bool StageComplete() const;
  std::vector<Outgoing> EndKeys(Clock::TimePoint now);
  std::vector<Outgoing> EndShares(Clock::TimePoint now);
  std::vector<Outgoing> EndInput(Clock::TimePoint now);
  void EndUnmask(Clock::TimePoint now);
  // Holders of `m` (its neighbours and itself) for which `in` is true.
  template <typename Pred>
  std::uint32_t CountHolders(std::uint32_t m, Pred in) const;
  // The secret rebuilt from `shares`, checked with `check`; with more shares than the threshold,
  // leaves one out at a time to get past a bad one. The holder of a bad share is named.
  Result<crypto::ShamirSecret> Rebuild(
      std::uint32_t owner, const std::map<std::uint32_t, crypto::ShamirShare>& shares,
      const std::function<bool(const crypto::ShamirSecret&)>& check, std::string_view what);
  std::uint32_t PositionAmongHolders(std::uint32_t owner, std::uint32_t holder) const;

  std::uint64_t round_;
  std::uint32_t attempt_;
  wire::SecAggParams params_;
  SecAggSettings settings_;
  secagg::Modulus modulus_;
  std::uint64_t length_ = 0;
  std::uint32_t min_members_;
  Clock::TimePoint input_deadline_;
  SecAggStage stage_ = SecAggStage::kKeys;
  Clock::TimePoint stage_started_{}, deadline_{};
  std::string failure_;
  std::map<std::string, std::uint32_t, std::less<>> index_;  // Client id -> index.
  std::map<std::uint32_t, Member> members_;                  // Index -> member.
  std::uint32_t threshold_ = 0;
  std::vector<std::uint32_t> sum_words_;
  std::optional<secagg::SecureSum> sum_;
  SecAggReport report_;
};

}  // namespace fedlora::server
