// neighbours.h — who masks with whom in SecAgg+ (Bell et al., CCS 2020): a Harary graph H(k, n)
// — each client joined to its k/2 nearest on either side of a ring — over the clients in an
// order drawn from a public seed, so every client has exactly k neighbours and which ones nobody
// can choose. With k >= n - 1 it is the complete graph (the original SecAgg).
//
// The order is a Fisher-Yates shuffle driven by the seed's ChaCha20 words (masking.h), with
// rejection sampling, so every platform draws the same graph from the same seed.
#pragma once

#include <cstdint>
#include <vector>

#include "common/crypto/key_agreement.h"
#include "common/status.h"

namespace fedlora::secagg {

// The degree used when none is configured: the complete graph up to 16 clients, then the
// smallest even number >= 3 log2(n) (our choice of the O(log n) the paper asks for: 30 at
// n = 1000, 50 at n = 100,000).
std::uint32_t DefaultDegree(std::uint32_t n);

// Every client's neighbours (indices 0..n-1, sorted, never itself). kInvalidArgument when n < 2,
// or when k, below n - 1, is odd or zero.
Result<std::vector<std::vector<std::uint32_t>>> NeighbourGraph(std::uint32_t n, std::uint32_t k,
                                                               const crypto::Seed& seed);

}  // namespace fedlora::secagg
