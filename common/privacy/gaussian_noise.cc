#include "common/privacy/gaussian_noise.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "common/crypto/random.h"
#include "common/crypto/sha256.h"
#include "common/secagg/masking.h"

namespace fedlora::privacy {

crypto::Seed DeriveNoiseSeed(const crypto::Seed& seed, std::string_view label) {
  std::string bytes(reinterpret_cast<const char*>(seed.data()), seed.size());
  bytes.append("\0fedlora-dp-noise\0", 18);
  bytes.append(label);
  const crypto::Digest digest = crypto::Sha256(bytes);
  crypto::Seed out;
  static_assert(sizeof(out) == sizeof(digest));
  std::memcpy(out.data(), digest.data(), out.size());
  return out;
}

crypto::Seed FreshNoiseSeed() {
  crypto::Seed seed;
  crypto::FillRandom(std::as_writable_bytes(std::span(seed)));
  return seed;
}

void AddGaussianNoise(std::span<double> values, double stddev, const crypto::Seed& seed) {
  if (values.empty() || stddev == 0) return;
  const std::size_t pairs = (values.size() + 1) / 2;
  // Four words per pair of draws: two uniforms of 53 bits each.
  std::vector<std::uint32_t> words(pairs * 4);
  secagg::ExpandMask(seed, secagg::Modulus::Bits(32).value(), words);
  const auto uniform = [&](std::size_t at) {  // In (0, 1]: log() below never sees 0.
    const std::uint64_t bits = (std::uint64_t{words[at]} << 32 | words[at + 1]) >> 11;
    return (static_cast<double>(bits) + 1.0) * 0x1.0p-53;
  };
  for (std::size_t p = 0; p < pairs; ++p) {
    const double radius = std::sqrt(-2.0 * std::log(uniform(4 * p)));
    const double angle = 2.0 * std::numbers::pi * uniform(4 * p + 2);
    values[2 * p] += stddev * radius * std::cos(angle);
    if (2 * p + 1 < values.size()) values[2 * p + 1] += stddev * radius * std::sin(angle);
  }
}

}  // namespace fedlora::privacy
