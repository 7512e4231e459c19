#include "common/crypto/sha256.h"

#include <openssl/evp.h>

#include "common/status.h"

namespace fedlora::crypto {
namespace {

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter>;

}  // namespace

struct Sha256Hasher::Impl {
  EvpMdCtxPtr ctx{EVP_MD_CTX_new()};
};

Sha256Hasher::Sha256Hasher() : impl_(std::make_unique<Impl>()) {
  // Allocation failure or a missing SHA-256 in libcrypto are environment bugs, not input errors.
  FEDLORA_CHECK(impl_->ctx != nullptr);
  FEDLORA_CHECK(EVP_DigestInit_ex(impl_->ctx.get(), EVP_sha256(), nullptr) == 1);
}
Sha256Hasher::~Sha256Hasher() = default;
Sha256Hasher::Sha256Hasher(Sha256Hasher&&) noexcept = default;
Sha256Hasher& Sha256Hasher::operator=(Sha256Hasher&&) noexcept = default;

void Sha256Hasher::Update(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  FEDLORA_CHECK(EVP_DigestUpdate(impl_->ctx.get(), bytes.data(), bytes.size()) == 1);
}

void Sha256Hasher::Update(std::string_view bytes) {
  Update(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

Digest Sha256Hasher::Finish() {
  Digest out;
  unsigned int len = 0;
  FEDLORA_CHECK(EVP_DigestFinal_ex(impl_->ctx.get(), reinterpret_cast<unsigned char*>(out.data()),
                                   &len) == 1);
  FEDLORA_CHECK(len == out.size());
  return out;
}

Digest Sha256(std::span<const std::byte> bytes) {
  Sha256Hasher h;
  h.Update(bytes);
  return h.Finish();
}

Digest Sha256(std::string_view bytes) {
  Sha256Hasher h;
  h.Update(bytes);
  return h.Finish();
}

std::string ToHex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    const auto v = static_cast<unsigned>(b);
    out.push_back(kDigits[v >> 4]);
    out.push_back(kDigits[v & 0xF]);
  }
  return out;
}

bool FromHex(std::string_view hex, Digest* out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < 32; ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<std::byte>(hi * 16 + lo);
  }
  return true;
}

}  // namespace fedlora::crypto
