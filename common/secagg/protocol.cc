#include "common/secagg/protocol.h"

#include <algorithm>
#include <cstring>

#include "common/crypto/aead.h"
#include "common/log.h"

namespace fedlora::secagg {
namespace {

void PutU32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint32_t GetU32(std::span<const std::uint8_t> in, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{in[at + i]} << (8 * i);
  return v;
}

std::vector<std::uint8_t> AssociatedData(std::uint64_t round, std::uint32_t attempt,
                                         std::uint32_t from, std::uint32_t to) {
  const std::string tag =
      StrCat("fedlora-secagg-v1 share r", round, " a", attempt, " ", from, "->", to);
  return std::vector<std::uint8_t>(tag.begin(), tag.end());
}

crypto::AeadKey AsAeadKey(const crypto::Seed& seed) {
  crypto::AeadKey key{};
  std::copy(seed.begin(), seed.end(), key.begin());
  return key;
}

}  // namespace

std::string ShareContext(std::uint64_t round, std::uint32_t attempt) {
  return StrCat("shares r", round, " a", attempt);
}

std::string MaskContext(std::uint64_t round, std::uint32_t attempt) {
  return StrCat("masks r", round, " a", attempt);
}

std::vector<std::uint8_t> SealSharePair(const crypto::Seed& key, const SharePair& pair,
                                        std::uint64_t round, std::uint32_t attempt) {
  std::vector<std::uint8_t> plain;
  plain.reserve(kSharePairBytes);
  PutU32(plain, pair.from);
  PutU32(plain, pair.to);
  for (const crypto::ShamirShare* share : {&pair.key, &pair.seed}) {
    PutU32(plain, share->x);
    plain.insert(plain.end(), share->y.begin(), share->y.end());
  }
  crypto::AeadKey aead = AsAeadKey(key);
  std::vector<std::uint8_t> sealed = crypto::AeadSealWithRandomNonce(
      aead, plain, AssociatedData(round, attempt, pair.from, pair.to));
  crypto::SecureWipe(plain);
  crypto::SecureWipe(aead);
  return sealed;
}

Result<SharePair> OpenSharePair(const crypto::Seed& key, std::span<const std::uint8_t> sealed,
                                std::uint32_t from, std::uint32_t to, std::uint64_t round,
                                std::uint32_t attempt) {
  if (sealed.size() != kSealedShareBytes) {
    return DataLoss("sealed share from member ", from, " has ", sealed.size(), " bytes, not ",
                    kSealedShareBytes);
  }
  crypto::AeadKey aead = AsAeadKey(key);
  Result<std::vector<std::uint8_t>> plain =
      crypto::AeadOpenWithNonce(aead, sealed, AssociatedData(round, attempt, from, to));
  crypto::SecureWipe(aead);
  if (!plain.ok()) {
    return DataLoss("the share from member ", from, " does not open: ", plain.status().message());
  }
  SharePair pair;
  pair.from = GetU32(*plain, 0);
  pair.to = GetU32(*plain, 4);
  std::size_t at = 8;
  for (crypto::ShamirShare* share : {&pair.key, &pair.seed}) {
    share->x = GetU32(*plain, at);
    std::copy_n(plain->begin() + static_cast<std::ptrdiff_t>(at + 4), share->y.size(),
                share->y.begin());
    at += 4 + share->y.size();
  }
  crypto::SecureWipe(*plain);
  if (pair.from != from || pair.to != to) {
    return DataLoss("the share from member ", from, " says it is from ", pair.from, " to ",
                    pair.to);
  }
  return pair;
}

void ApplyPairwiseMask(std::span<std::uint32_t> words, const crypto::Seed& seed, std::uint32_t own,
                       std::uint32_t peer, Modulus modulus, bool remove) {
  const bool add = (own < peer) != remove;
  ApplyMask(words, seed, modulus, add);
}

Result<crypto::X25519Key> PublicKeyOf(const crypto::X25519Key& secret_key) {
  crypto::X25519Key base{};
  base[0] = 9;  // The Curve25519 base point's u-coordinate.
  return crypto::X25519(secret_key, base);
}

}  // namespace fedlora::secagg
