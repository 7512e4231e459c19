#include "common/crypto/aead.h"

#include <sodium.h>

namespace fedlora::crypto {
namespace {

void InitSodium() {
  static const int rc = sodium_init();
  FEDLORA_CHECK_MSG(rc >= 0, "sodium_init failed (no entropy source?)");
}

}  // namespace

std::vector<std::uint8_t> AeadSeal(const AeadKey& key, const AeadNonce& nonce,
                                   std::span<const std::uint8_t> plaintext,
                                   std::span<const std::uint8_t> associated) {
  InitSodium();
  std::vector<std::uint8_t> out(plaintext.size() + kAeadTagBytes);
  unsigned long long written = 0;
  FEDLORA_CHECK(crypto_aead_chacha20poly1305_ietf_encrypt(
                    out.data(), &written, plaintext.data(), plaintext.size(), associated.data(),
                    associated.size(), nullptr, nonce.data(), key.data()) == 0);
  out.resize(static_cast<std::size_t>(written));
  return out;
}

Result<std::vector<std::uint8_t>> AeadOpen(const AeadKey& key, const AeadNonce& nonce,
                                           std::span<const std::uint8_t> sealed,
                                           std::span<const std::uint8_t> associated) {
  InitSodium();
  if (sealed.size() < kAeadTagBytes) {
    return DataLoss("sealed message of ", sealed.size(), " bytes is shorter than its tag");
  }
  std::vector<std::uint8_t> out(sealed.size() - kAeadTagBytes);
  unsigned long long written = 0;
  if (crypto_aead_chacha20poly1305_ietf_decrypt(out.data(), &written, nullptr, sealed.data(),
                                                sealed.size(), associated.data(), associated.size(),
                                                nonce.data(), key.data()) != 0) {
    return DataLoss("sealed message does not verify (tampered, or another key or context)");
  }
  out.resize(static_cast<std::size_t>(written));
  return out;
}

std::vector<std::uint8_t> AeadSealWithRandomNonce(const AeadKey& key,
                                                  std::span<const std::uint8_t> plaintext,
                                                  std::span<const std::uint8_t> associated) {
  InitSodium();
  AeadNonce nonce;
  randombytes_buf(nonce.data(), nonce.size());
  std::vector<std::uint8_t> out(nonce.begin(), nonce.end());
  const std::vector<std::uint8_t> sealed = AeadSeal(key, nonce, plaintext, associated);
  out.insert(out.end(), sealed.begin(), sealed.end());
  return out;
}

Result<std::vector<std::uint8_t>> AeadOpenWithNonce(const AeadKey& key,
                                                    std::span<const std::uint8_t> sealed,
                                                    std::span<const std::uint8_t> associated) {
  AeadNonce nonce;
  if (sealed.size() < nonce.size() + kAeadTagBytes) {
    return DataLoss("sealed message of ", sealed.size(), " bytes is shorter than nonce and tag");
  }
  std::copy(sealed.begin(), sealed.begin() + nonce.size(), nonce.begin());
  return AeadOpen(key, nonce, sealed.subspan(nonce.size()), associated);
}

}  // namespace fedlora::crypto
