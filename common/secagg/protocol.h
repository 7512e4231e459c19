// protocol.h — what both ends of the SecAgg+ stages agree on (issue 13; proto/fedlora.capnp,
// "Secure aggregation"): the HKDF contexts, the sealed share format and the sign of a pairwise
// mask. The client's side is client_protocol.h, the coordinator's server/secagg_attempt.h.
//
// Shares: client u splits its masking secret key and its self-mask seed among its holders (its
// neighbours and itself, sorted by index), the share of holder j at Shamir x = j's position in
// that list, 1-based. The pair for holder v travels sealed with ChaCha20-Poly1305 under
// AgreeSeed(c_sk_u, c_pk_v, ShareContext), the associated data binding round, attempt, sender and
// recipient, so the coordinator that routes it can neither read nor redirect it.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/crypto/shamir.h"
#include "common/secagg/masking.h"
#include "common/status.h"

namespace fedlora::secagg {

// HKDF contexts of the two agreements, per round and attempt (fresh keys every attempt anyway).
std::string ShareContext(std::uint64_t round, std::uint32_t attempt);
std::string MaskContext(std::uint64_t round, std::uint32_t attempt);

// The plaintext of one sealed share pair: from, to (u32 LE), then the two Shamir shares, each as
// x (u32 LE) and y (33 bytes).
struct SharePair {
  std::uint32_t from = 0;
  std::uint32_t to = 0;
  crypto::ShamirShare key;   // Of the sender's masking secret key.
  crypto::ShamirShare seed;  // Of the sender's self-mask seed.
};
inline constexpr std::size_t kSharePairBytes = 4 + 4 + 2 * (4 + crypto::kShamirShareBytes);
// Nonce + plaintext + tag: the only length a sealed share may have.
inline constexpr std::size_t kSealedShareBytes = 12 + kSharePairBytes + 16;

std::vector<std::uint8_t> SealSharePair(const crypto::Seed& key, const SharePair& pair,
                                        std::uint64_t round, std::uint32_t attempt);
// kDataLoss when it does not open (tampered, another key, another round, attempt or pair).
Result<SharePair> OpenSharePair(const crypto::Seed& key, std::span<const std::uint8_t> sealed,
                                std::uint32_t from, std::uint32_t to, std::uint64_t round,
                                std::uint32_t attempt);

// Adds (or, with `remove`, takes out) the pairwise mask that member `own` applies for its
// neighbour `peer`: +PRG(seed) when own < peer, -PRG(seed) otherwise, so the pair's masks cancel.
void ApplyPairwiseMask(std::span<std::uint32_t> words, const crypto::Seed& seed, std::uint32_t own,
                       std::uint32_t peer, Modulus modulus, bool remove);

// The X25519 public key of `secret_key` (to check a rebuilt masking key against the one sent).
Result<crypto::X25519Key> PublicKeyOf(const crypto::X25519Key& secret_key);

}  // namespace fedlora::secagg
