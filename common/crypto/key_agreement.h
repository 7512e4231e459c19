// key_agreement.h — X25519 key agreement and HKDF-SHA256, for secure aggregation (issue 13): two
// clients who exchanged public keys through the coordinator derive the same 32-byte seed, which
// the coordinator (holding only the public keys) cannot.
//
// X25519 is libsodium's crypto_scalarmult (RFC 7748); HKDF is OpenSSL's EVP_KDF "HKDF" (RFC
// 5869). Both are checked against their RFCs' test vectors (tests/common/key_agreement_test.cc).
// No libsodium or OpenSSL header leaks out of key_agreement.cc.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedlora::crypto {

using X25519Key = std::array<std::uint8_t, 32>;
using Seed = std::array<std::uint8_t, 32>;

struct AgreementKeyPair {
  X25519Key public_key{};
  X25519Key secret_key{};  // Wiped by the owner when done (SecureWipe).
};

// A fresh key pair from the system's CSPRNG.
AgreementKeyPair GenerateAgreementKeyPair();

// X25519(secret, peer_public): the shared secret. kInvalidArgument when the peer's key is a
// low-order point (the result would be all zeros, known to anyone).
Result<X25519Key> X25519(const X25519Key& secret_key, const X25519Key& peer_public_key);

// HKDF-SHA256 (RFC 5869): `length` bytes from `ikm`, `salt` and `info`.
std::vector<std::uint8_t> HkdfSha256(std::span<const std::uint8_t> ikm,
                                     std::span<const std::uint8_t> salt,
                                     std::span<const std::uint8_t> info, std::size_t length);

// The seed two parties share: HKDF-SHA256 of their X25519 secret, salted with
// "fedlora-secagg-v1", with `context` (round, the pair's indices: whatever binds it) as info.
Result<Seed> AgreeSeed(const X25519Key& own_secret_key, const X25519Key& peer_public_key,
                       std::string_view context);

// Overwrites `bytes` with zeros in a way the compiler keeps (sodium_memzero).
void SecureWipe(std::span<std::uint8_t> bytes);

}  // namespace fedlora::crypto
