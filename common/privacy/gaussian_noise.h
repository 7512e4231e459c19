// gaussian_noise.h — the Gaussian noise of differential privacy (docs/privacy.md).
//
// Standard normal draws by the Box–Muller transform from uniform doubles with 53 random bits,
// read from the ChaCha20 keystream of a 32-byte seed (secagg/masking.h's ExpandMask). The
// coordinator seeds each round from the operating system's generator (crypto::FillRandom), so
// nobody can predict or replay the noise; tests give a fixed seed.
//
// Known limit: floating-point samples of a continuous Gaussian leak through their low bits in
// principle (Mironov 2012 showed it for Laplace); a discrete Gaussian (Canonne et al. 2020) would
// close that. docs/privacy.md lists it.
#pragma once

#include <span>
#include <string_view>

#include "common/crypto/key_agreement.h"

namespace fedlora::privacy {

// A seed for one named use of `seed` (SHA-256 of both): independent streams per tensor.
crypto::Seed DeriveNoiseSeed(const crypto::Seed& seed, std::string_view label);

// A fresh seed from the operating system's generator.
crypto::Seed FreshNoiseSeed();

// values[i] += stddev * z_i, z_i standard normal from `seed`'s stream. stddev >= 0.
void AddGaussianNoise(std::span<double> values, double stddev, const crypto::Seed& seed);

}  // namespace fedlora::privacy
