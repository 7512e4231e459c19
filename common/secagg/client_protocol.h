// client_protocol.h — a client's side of one SecAgg+ attempt (issue 13): its keys, its shares,
// its masks and what it reveals, as a value the client session drives with the coordinator's
// messages (proto/fedlora.capnp, "Secure aggregation"). No sockets, no threads.
//
//   ClientProtocol p(round, attempt, modulus);  send p.Keys()
//   roster  -> p.OnRoster  -> send the sealed shares
//   shares  -> p.OnShares  (the neighbours that shared: the client masks with exactly these)
//   trained -> p.Mask(quantised input) -> send the masked Update
//   unmask  -> p.OnUnmask  -> send the reveal
//
// What an honest client refuses, so a curious coordinator cannot unmask one input: a roster that
// does not carry its own keys, or a threshold below 2 or above its holders; a second unmask; an
// unmask naming a member both survivor and dropped, leaving it out of the survivors, or leaving
// fewer than the threshold of its holders among the survivors. It never reveals both the seed and
// the key of one member. Secrets are wiped when the object dies.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/crypto/shamir.h"
#include "common/secagg/masking.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::secagg {

class ClientProtocol {
 public:
  // Fresh key pairs and self-mask seed for attempt `attempt` of `round`.
  ClientProtocol(std::uint64_t round, std::uint32_t attempt, Modulus modulus);
  ~ClientProtocol();
  ClientProtocol(const ClientProtocol&) = delete;
  ClientProtocol& operator=(const ClientProtocol&) = delete;
  ClientProtocol(ClientProtocol&&) = default;

  std::uint64_t round() const { return round_; }
  std::uint32_t attempt() const { return attempt_; }
  wire::SecAggKeys Keys() const;

  // Stage 2: the shares of its key and seed, one sealed pair per neighbour (its own share is
  // kept). kInvalidArgument for a roster it must not join (see above), naming why.
  Result<wire::SecAggShares> OnRoster(const wire::SecAggRoster& roster);
  // The pairs routed to it. A pair that does not open is logged and skipped (that member's share
  // is missing, nothing more); one from a non-neighbour, or a second delivery, is refused.
  Status OnShares(const wire::SecAggShares& routed);
  bool ready_to_mask() const { return routed_; }
  // Stage 3: `input` (mod 2^m) plus its self mask and the pairwise masks with the neighbours
  // that shared. FailedPrecondition before OnShares.
  Result<std::vector<std::uint32_t>> Mask(std::vector<std::uint32_t> input) const;
  // Stage 4: its shares of the survivors' seeds and the dropped members' keys.
  Result<wire::SecAggReveal> OnUnmask(const wire::SecAggUnmask& unmask);

 private:
  std::uint64_t round_;
  std::uint32_t attempt_;
  Modulus modulus_;
  crypto::AgreementKeyPair c_;  // Its shares are sealed to c.
  crypto::AgreementKeyPair s_;  // Its pairwise masks are agreed with s.
  crypto::Seed seed_{};         // The self mask's seed, b.
  std::optional<wire::SecAggRoster> roster_;
  std::uint32_t own_ = 0;
  // Neighbours that shared with it (index -> their s public key), and the pairs they sent (its
  // own included once the roster came).
  std::map<std::uint32_t, crypto::X25519Key> sharers_;
  std::map<std::uint32_t, crypto::ShamirShare> key_shares_, seed_shares_;
  bool routed_ = false;
  bool revealed_ = false;
};

}  // namespace fedlora::secagg
