// masking.h — the masks of secure aggregation (issue 13; Bonawitz et al. 2017, Bell et al. 2020).
//
// Inputs are vectors of integers modulo 2^m (m in 1..32, held in uint32 words). A 32-byte seed
// expands into a mask, a stream of words taken mod 2^m: the ChaCha20 keystream (IETF variant,
// libsodium) with the seed as key, a zero nonce and block counter 0, read as little-endian 32-bit
// words. A client u adds to its input, mod 2^m, its self mask PRG(b_u) and, for every neighbour
// v, +PRG(s_uv) when u < v and -PRG(s_uv) when u > v, where s_uv is the seed u and v agree on
// (crypto/key_agreement.h). Summed over the clients that sent masked inputs, the pairwise masks
// of pairs that both sent cancel; the coordinator removes the rest — each survivor's self mask
// and the pairwise masks between survivors and dropped clients — with seeds rebuilt from Shamir
// shares, and is left with the exact sum of the inputs mod 2^m.
#pragma once

#include <cstdint>
#include <span>

#include "common/crypto/key_agreement.h"
#include "common/status.h"

namespace fedlora::secagg {

// Arithmetic modulo 2^bits on uint32 words.
class Modulus {
 public:
  // kInvalidArgument unless 1 <= bits <= 32.
  static Result<Modulus> Bits(std::uint32_t bits);
  std::uint32_t bits() const { return bits_; }
  std::uint32_t mask() const { return mask_; }  // 2^bits - 1.

 private:
  explicit Modulus(std::uint32_t bits)
      : bits_(bits), mask_(bits == 32 ? ~std::uint32_t{0} : (std::uint32_t{1} << bits) - 1) {}
  std::uint32_t bits_;
  std::uint32_t mask_;
};

// out[i] = word i of the seed's keystream, mod 2^m.
void ExpandMask(const crypto::Seed& seed, Modulus modulus, std::span<std::uint32_t> out);

// values[i] = values[i] + mask[i] (add) or - mask[i] (subtract), mod 2^m, with the mask of
// `seed` generated in blocks (no buffer of the vector's size).
void ApplyMask(std::span<std::uint32_t> values, const crypto::Seed& seed, Modulus modulus,
               bool add);

// values[i] = values[i] + others[i] mod 2^m (the coordinator summing masked inputs).
// kInvalidArgument when the lengths differ.
Status AddInto(std::span<std::uint32_t> values, std::span<const std::uint32_t> others,
               Modulus modulus);

}  // namespace fedlora::secagg
