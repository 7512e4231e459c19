#include "common/crypto/random.h"

#include <openssl/rand.h>

#include "common/status.h"

namespace fedlora::crypto {

std::uint64_t RandomU64() {
  std::uint64_t v = 0;
  while (v == 0) {
    // RAND_bytes fails only when the OS entropy source is broken: an environment bug.
    FEDLORA_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof(v)) == 1);
  }
  return v;
}

void FillRandom(std::span<std::byte> out) {
  if (out.empty()) return;
  FEDLORA_CHECK(
      RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size())) == 1);
}

}  // namespace fedlora::crypto
