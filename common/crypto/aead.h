// aead.h — ChaCha20-Poly1305 (IETF variant, RFC 8439; libsodium), for what secure aggregation
// sends one client to another through the coordinator: each client's Shamir shares, sealed with
// the key it agreed with the recipient (key_agreement.h), so the coordinator routes them without
// reading or altering them. Checked against RFC 8439 section 2.8.2.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace fedlora::crypto {

using AeadKey = std::array<std::uint8_t, 32>;
using AeadNonce = std::array<std::uint8_t, 12>;
inline constexpr std::size_t kAeadTagBytes = 16;

// ciphertext || tag. A (key, nonce) pair must never seal two messages.
std::vector<std::uint8_t> AeadSeal(const AeadKey& key, const AeadNonce& nonce,
                                   std::span<const std::uint8_t> plaintext,
                                   std::span<const std::uint8_t> associated);
// The plaintext, or kDataLoss when the tag does not verify (tampered, truncated, another key,
// nonce or associated data).
Result<std::vector<std::uint8_t>> AeadOpen(const AeadKey& key, const AeadNonce& nonce,
                                           std::span<const std::uint8_t> sealed,
                                           std::span<const std::uint8_t> associated);

// With a fresh random nonce, sent in front: nonce || ciphertext || tag.
std::vector<std::uint8_t> AeadSealWithRandomNonce(const AeadKey& key,
                                                  std::span<const std::uint8_t> plaintext,
                                                  std::span<const std::uint8_t> associated);
Result<std::vector<std::uint8_t>> AeadOpenWithNonce(const AeadKey& key,
                                                    std::span<const std::uint8_t> sealed,
                                                    std::span<const std::uint8_t> associated);

}  // namespace fedlora::crypto
