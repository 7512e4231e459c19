// sha256.h — SHA-256 digests through OpenSSL's EVP interface.
//
// Used for tensor frames on the wire, checkpoint manifests and base-model identity. No OpenSSL
// header leaks out of sha256.cc.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace fedlora::crypto {

using Digest = std::array<std::byte, 32>;

Digest Sha256(std::span<const std::byte> bytes);
Digest Sha256(std::string_view bytes);
std::string ToHex(std::span<const std::byte> bytes);
// Parses 64 hex digits (either case); false on anything else.
bool FromHex(std::string_view hex, Digest* out);

// Incremental hashing for data that arrives in pieces. Move-only; owns an OpenSSL context.
class Sha256Hasher {
 public:
  Sha256Hasher();
  ~Sha256Hasher();
  Sha256Hasher(Sha256Hasher&&) noexcept;
  Sha256Hasher& operator=(Sha256Hasher&&) noexcept;
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;

  void Update(std::span<const std::byte> bytes);
  void Update(std::string_view bytes);
  Digest Finish();  // The hasher must not be used afterwards.

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::crypto
