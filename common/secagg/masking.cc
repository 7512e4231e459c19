#include "common/secagg/masking.h"

#include <sodium.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

namespace fedlora::secagg {
namespace {

// Words per keystream block generated at once (64 KiB): large enough for libsodium's vector
// code, small enough to stay in cache.
constexpr std::size_t kBlockWords = 16384;

// Calls `fn(offset, words)` for consecutive keystream blocks covering `count` words.
template <typename F>
void ForEachBlock(const crypto::Seed& seed, std::size_t count, F&& fn) {
  static const int rc = sodium_init();
  FEDLORA_CHECK_MSG(rc >= 0, "sodium_init failed (no entropy source?)");
  // The 32-bit block counter covers 2^36 words (256 GiB of mask) per seed.
  FEDLORA_CHECK_MSG(count <= (std::size_t{1} << 36), "a mask longer than 2^36 words");
  std::array<std::uint32_t, kBlockWords> block;
  const std::array<unsigned char, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{};
  for (std::size_t at = 0; at < count; at += kBlockWords) {
    const std::size_t words = std::min(kBlockWords, count - at);
    // Block counter = at / 16 (a ChaCha20 block is 64 bytes = 16 words; kBlockWords is a
    // multiple of 16), so the stream is the same whatever the block size.
    std::memset(block.data(), 0, words * sizeof(std::uint32_t));
    crypto_stream_chacha20_ietf_xor_ic(reinterpret_cast<unsigned char*>(block.data()),
                                       reinterpret_cast<const unsigned char*>(block.data()),
                                       words * sizeof(std::uint32_t), nonce.data(),
                                       static_cast<std::uint32_t>(at / 16), seed.data());
    if constexpr (std::endian::native != std::endian::little) {
      for (std::size_t i = 0; i < words; ++i) block[i] = __builtin_bswap32(block[i]);
    }
    fn(at, std::span<const std::uint32_t>(block.data(), words));
  }
}

}  // namespace

Result<Modulus> Modulus::Bits(std::uint32_t bits) {
  if (bits < 1 || bits > 32) {
    return InvalidArgument("secure aggregation modulus 2^", bits, ": bits must be in 1..32");
  }
  return Modulus(bits);
}

void ExpandMask(const crypto::Seed& seed, Modulus modulus, std::span<std::uint32_t> out) {
  const std::uint32_t mask = modulus.mask();
  ForEachBlock(seed, out.size(), [&](std::size_t at, std::span<const std::uint32_t> words) {
    for (std::size_t i = 0; i < words.size(); ++i) out[at + i] = words[i] & mask;
  });
}

void ApplyMask(std::span<std::uint32_t> values, const crypto::Seed& seed, Modulus modulus,
               bool add) {
  const std::uint32_t mask = modulus.mask();
  ForEachBlock(seed, values.size(), [&](std::size_t at, std::span<const std::uint32_t> words) {
    std::uint32_t* v = values.data() + at;
    if (add) {
      for (std::size_t i = 0; i < words.size(); ++i) v[i] = (v[i] + words[i]) & mask;
    } else {
      for (std::size_t i = 0; i < words.size(); ++i) v[i] = (v[i] - words[i]) & mask;
    }
  });
}

Status AddInto(std::span<std::uint32_t> values, std::span<const std::uint32_t> others,
               Modulus modulus) {
  if (values.size() != others.size()) {
    return InvalidArgument("masked vector of ", others.size(), " words, expected ", values.size());
  }
  const std::uint32_t mask = modulus.mask();
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = (values[i] + others[i]) & mask;
  return OkStatus();
}

}  // namespace fedlora::secagg
