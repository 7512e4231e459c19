// test_assets.h — paths of the repository's test assets, shared by the client test binaries.
#pragma once

#include <string>

namespace fedlora::client::testing_assets {

inline std::string AssetPath(const std::string& relative) {
  return std::string(FEDLORA_SOURCE_DIR) + "/assets/" + relative;
}
inline std::string LegacyModelPath() { return AssetPath("models/stories260K/stories260K.bin"); }
inline std::string V1ModelPath() { return AssetPath("models/stories260K/stories260K_v1.bin"); }
inline std::string TokenizerPath() { return AssetPath("models/stories260K/tok512.bin"); }
inline std::string ShakespearePath() { return AssetPath("datasets/tinyshakespeare/input.txt"); }

}  // namespace fedlora::client::testing_assets
