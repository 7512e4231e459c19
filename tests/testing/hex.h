// hex.h — hex strings to bytes, for the known-answer vectors of the crypto tests.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fedlora::testing {

inline std::vector<std::uint8_t> HexBytes(std::string_view hex) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

}  // namespace fedlora::testing
