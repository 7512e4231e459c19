// test_assets.h — paths of the repository's test assets, shared by the client test binaries.
#pragma once

#include <cstdlib>
#include <filesystem>

#include <string>

namespace fedlora::client::testing_assets {

inline std::string AssetPath(const std::string& relative) {
  return std::string(FEDLORA_SOURCE_DIR) + "/assets/" + relative;
}
inline std::string LegacyModelPath() { return AssetPath("models/stories260K/stories260K.bin"); }
inline std::string V1ModelPath() { return AssetPath("models/stories260K/stories260K_v1.bin"); }
inline std::string TokenizerPath() { return AssetPath("models/stories260K/tok512.bin"); }
inline std::string ShakespearePath() { return AssetPath("datasets/tinyshakespeare/input.txt"); }

// Small tokenizers and golden encodings written by scripts/make_tokenizer_fixtures.py.
// The shared datasets (GSM8K, SST-2, SpamAssassin) live beside the checkout, in
// ../shared/data/datasets, or where FEDLORA_DATASETS_DIR points. Tests that need them skip when
// the file is absent (HasDataset).
inline std::string DatasetPath(const std::string& relative) {
  const char* dir = std::getenv("FEDLORA_DATASETS_DIR");
  return (dir != nullptr ? std::string(dir)
                         : std::string(FEDLORA_SOURCE_DIR) + "/../shared/data/datasets") +
         "/" + relative;
}
inline bool HasDataset(const std::string& relative) {
  return std::filesystem::exists(DatasetPath(relative));
}
// In a test body: skips the test, naming the file, when the dataset is absent.
#define FEDLORA_REQUIRE_DATASET(relative)            \
  if (!::fedlora::client::testing_assets::HasDataset(relative)) \
  GTEST_SKIP() << "no dataset " << ::fedlora::client::testing_assets::DatasetPath(relative)

inline std::string TokenizerFixturePath(const std::string& relative) {
  return std::string(FEDLORA_SOURCE_DIR) + "/tests/data/tokenizers/" + relative;
}

}  // namespace fedlora::client::testing_assets
