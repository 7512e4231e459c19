// seed.h — the one way fedlora derives seeds: every sub-seed (a client's training seed, a fleet
// profile, a data split, a simulated attacker's noise) is MixSeed of its parent and a salt or
// index, so runs are reproducible across machines, builds and placements.
#pragma once

#include <cstdint>
#include <string_view>

namespace fedlora {

// A well-mixed 64-bit combination of two seeds (splitmix64's finalizer over a combination that is
// not symmetric in a and b), for deriving sub-seeds. A fixed function: changing it changes every
// derived seed, so every recorded result.
constexpr std::uint64_t MixSeed(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// FNV-1a 64 of `s`: stable across platforms, builds and runs (unlike std::hash), to turn a name
// into a seed.
constexpr std::uint64_t StableHash(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

}  // namespace fedlora
