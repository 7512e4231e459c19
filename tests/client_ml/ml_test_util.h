// ml_test_util.h — helpers shared by the LibTorch client tests (the binary is unity-built, so
// shared helpers live here once instead of in each file's anonymous namespace).
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client::ml_test {

using testing_assets::LegacyModelPath;
using testing_assets::ShakespearePath;
using testing_assets::TokenizerPath;
using testing_assets::V1ModelPath;

inline std::shared_ptr<const LlamaModel> LoadModelOrDie(const std::string& path) {
  Result<std::shared_ptr<const LlamaModel>> model = LlamaModel::LoadLlama2c(path);
  FEDLORA_CHECK_MSG(model.ok(), model.status().ToString());
  return std::move(model).value();
}

// The legacy stories260K model, loaded once per process and shared read-only, as in the simulator.
inline const LlamaModel& Stories260K() {
  static const std::shared_ptr<const LlamaModel> model = LoadModelOrDie(LegacyModelPath());
  return *model;
}

inline const Tokenizer& Tok512() {
  static const Tokenizer tokenizer = [] {
    Result<Tokenizer> t = Tokenizer::Load(TokenizerPath(), 512);
    FEDLORA_CHECK_MSG(t.ok(), t.status().ToString());
    return std::move(t).value();
  }();
  return tokenizer;
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline std::string WriteTempFile(const std::string& name, std::string_view bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

inline at::Tensor Tokens(const std::vector<std::vector<std::int64_t>>& rows) {
  const auto b = static_cast<std::int64_t>(rows.size());
  const auto t = static_cast<std::int64_t>(rows[0].size());
  at::Tensor out = at::empty({b, t}, at::kLong);
  for (std::int64_t i = 0; i < b; ++i) {
    for (std::int64_t j = 0; j < t; ++j) out[i][j] = rows[i][j];
  }
  return out;
}

inline at::Tensor RandomTokens(std::int64_t batch, std::int64_t time, std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randint(512, {batch, time}, gen, at::kLong);
}

inline at::Tensor ForwardOrDie(const LlamaModel& model, const at::Tensor& tokens,
                               ModuleAdapter* adapter = nullptr) {
  Result<at::Tensor> logits = model.Forward(tokens, adapter);
  FEDLORA_CHECK_MSG(logits.ok(), logits.status().ToString());
  return std::move(logits).value();
}

}  // namespace fedlora::client::ml_test
