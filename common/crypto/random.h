// random.h — cryptographically secure random values (OpenSSL RAND_bytes), for session ids and
// tokens. Not for reproducible experiments: those use seeded generators passed in explicitly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace fedlora::crypto {

std::uint64_t RandomU64();  // Never 0.
void FillRandom(std::span<std::byte> out);  // Secret keys, seeds, nonces.

}  // namespace fedlora::crypto
