// random.h — cryptographically secure random values (OpenSSL RAND_bytes), for session ids and
// tokens. Not for reproducible experiments: those use seeded generators passed in explicitly.
#pragma once

#include <cstdint>

namespace fedlora::crypto {

std::uint64_t RandomU64();  // Never 0.

}  // namespace fedlora::crypto
