#include "common/crypto/key_agreement.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <sodium.h>

#include <memory>

namespace fedlora::crypto {
namespace {

void InitSodium() {
  // sodium_init is idempotent and thread-safe; it fails only without an entropy source.
  static const int rc = sodium_init();
  FEDLORA_CHECK_MSG(rc >= 0, "sodium_init failed (no entropy source?)");
}

std::span<const std::uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace

AgreementKeyPair GenerateAgreementKeyPair() {
  InitSodium();
  AgreementKeyPair pair;
  randombytes_buf(pair.secret_key.data(), pair.secret_key.size());
  FEDLORA_CHECK(crypto_scalarmult_base(pair.public_key.data(), pair.secret_key.data()) == 0);
  return pair;
}

Result<X25519Key> X25519(const X25519Key& secret_key, const X25519Key& peer_public_key) {
  InitSodium();
  X25519Key shared{};
  if (crypto_scalarmult(shared.data(), secret_key.data(), peer_public_key.data()) != 0) {
    return InvalidArgument("X25519: the peer's public key is a low-order point");
  }
  return shared;
}

std::vector<std::uint8_t> HkdfSha256(std::span<const std::uint8_t> ikm,
                                     std::span<const std::uint8_t> salt,
                                     std::span<const std::uint8_t> info, std::size_t length) {
  const std::unique_ptr<EVP_KDF, decltype(&EVP_KDF_free)> kdf(
      EVP_KDF_fetch(nullptr, "HKDF", nullptr), &EVP_KDF_free);
  FEDLORA_CHECK_MSG(kdf != nullptr, "OpenSSL has no HKDF");
  const std::unique_ptr<EVP_KDF_CTX, decltype(&EVP_KDF_CTX_free)> ctx(EVP_KDF_CTX_new(kdf.get()),
                                                                      &EVP_KDF_CTX_free);
  FEDLORA_CHECK(ctx != nullptr);
  char digest[] = "SHA256";
  // OpenSSL takes non-const pointers but only reads them.
  auto* ikm_p = const_cast<std::uint8_t*>(ikm.data());
  auto* salt_p = const_cast<std::uint8_t*>(salt.data());
  auto* info_p = const_cast<std::uint8_t*>(info.data());
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikm_p, ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt_p, salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info_p, info.size()),
      OSSL_PARAM_construct_end()};
  std::vector<std::uint8_t> out(length);
  FEDLORA_CHECK_MSG(EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) == 1,
                    "HKDF-SHA256 failed");
  return out;
}

Result<Seed> AgreeSeed(const X25519Key& own_secret_key, const X25519Key& peer_public_key,
                       std::string_view context) {
  FEDLORA_ASSIGN_OR_RETURN(X25519Key shared, X25519(own_secret_key, peer_public_key));
  std::vector<std::uint8_t> okm =
      HkdfSha256(shared, Bytes("fedlora-secagg-v1"), Bytes(context), sizeof(Seed));
  SecureWipe(shared);
  Seed seed{};
  std::copy(okm.begin(), okm.end(), seed.begin());
  SecureWipe(okm);
  return seed;
}

void SecureWipe(std::span<std::uint8_t> bytes) { sodium_memzero(bytes.data(), bytes.size()); }

}  // namespace fedlora::crypto
