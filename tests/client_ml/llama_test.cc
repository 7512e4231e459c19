#include "client/model/llama.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <thread>

#include "client/train/trainer.h"
#include "common/crypto/sha256.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

Status LoadStatusOf(const std::string& path) { return LlamaModel::LoadLlama2c(path).status(); }

void WriteInt32(std::string& bytes, std::size_t offset, std::int32_t v) {
  std::memcpy(&bytes[offset], &v, sizeof v);
}

TEST(LlamaModelTest, ReadsTheStories260KHeaderFromBothLayouts) {
  for (const std::string& path : {LegacyModelPath(), V1ModelPath()}) {
    const auto model = LoadModelOrDie(path);
    const LlamaConfig& c = model->config();
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.hidden_dim, 172);
    EXPECT_EQ(c.n_layers, 5);
    EXPECT_EQ(c.n_heads, 8);
    EXPECT_EQ(c.n_kv_heads, 4);
    EXPECT_EQ(c.vocab_size, 512);
    EXPECT_EQ(c.seq_len, 512);
    EXPECT_TRUE(c.shared_classifier);
    EXPECT_EQ(model->TensorNames().size(), 1u + 5 * 9 + 1);  // No lm_head: tied.
  }
}

TEST(LlamaModelTest, ReproducesTheGoldenLogitsAfterBos) {
  const at::Tensor logits = ForwardOrDie(Stories260K(), Tokens({{Tokenizer::kBos}}));
  ASSERT_EQ(logits.sizes(), (std::vector<std::int64_t>{1, 1, 512}));
  EXPECT_EQ(logits[0][0].argmax().item<std::int64_t>(), 403);
  const float golden[] = {-6.2229f, 8.4043f, -6.2237f, -6.2225f, -6.2220f};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(logits[0][0][i].item<float>(), golden[i], 1e-3) << i;
}

TEST(LlamaModelTest, GreedyDecodingFromBosReproducesTheGoldenStory) {
  const Result<std::vector<TokenId>> tokens =
      GenerateGreedy(Stories260K(), nullptr, {Tokenizer::kBos}, 20);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  EXPECT_THAT(*tokens, ElementsAre(1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421,
                                   395, 317, 426, 338, 401, 396, 267, 337));
  EXPECT_EQ(Tok512().Decode(*tokens),
            "Once upon a time, there was a little girl named Lily. She loved to play");
}

TEST(LlamaModelTest, LegacyAndVersion1FilesGiveIdenticalLogits) {
  const auto v1 = LoadModelOrDie(V1ModelPath());
  const at::Tensor tokens = RandomTokens(2, 96, 1);
  EXPECT_TRUE(at::equal(ForwardOrDie(Stories260K(), tokens), ForwardOrDie(*v1, tokens)));
}

TEST(LlamaModelTest, LegacyAndVersion1FilesGiveTheSameDigest) {
  const auto v1 = LoadModelOrDie(V1ModelPath());
  EXPECT_EQ(Stories260K().Digest(), v1->Digest());
  EXPECT_EQ(Stories260K().Digest().size(), 64u);
}

TEST(LlamaModelTest, DigestHashesNameDtypeShapeAndDataInSortedNameOrder) {
  const LlamaModel& model = Stories260K();
  crypto::Sha256Hasher hasher;
  const auto put_i64 = [&](std::int64_t v) {
    hasher.Update(std::string_view(reinterpret_cast<const char*>(&v), 8));
  };
  std::vector<std::string> names = model.TensorNames();
  ASSERT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.back(), "model.norm.weight");
  for (const std::string& name : names) {
    const at::Tensor w = model.Weight(name).contiguous();
    hasher.Update(name);
    hasher.Update(std::string_view("\0", 1));
    put_i64(1);  // DType::kF32.
    put_i64(w.dim());
    for (std::int64_t d : w.sizes()) put_i64(d);
    hasher.Update(std::string_view(static_cast<const char*>(w.data_ptr()), w.numel() * 4));
  }
  EXPECT_EQ(crypto::ToHex(hasher.Finish()), model.Digest());
}

TEST(LlamaModelTest, DigestChangesWhenOneWeightChanges) {
  const LlamaModel& base = Stories260K();
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& name : base.TensorNames()) tensors[name] = base.Weight(name).clone();
  tensors["model.layers.4.mlp.down_proj.weight"][0][0] += 1e-6;
  const auto changed = LlamaModel::FromTensors(base.config(), tensors);
  ASSERT_TRUE(changed.ok()) << changed.status().ToString();
  EXPECT_NE((*changed)->Digest(), base.Digest());
}

TEST(LlamaModelTest, MeanNllOnTinyShakespeareChunksMatchesTheGolden) {
  const std::string corpus = ReadFileBytes(ShakespearePath());
  double nll = 0.0;
  std::int64_t predictions = 0;
  for (int chunk = 0; chunk < 20; ++chunk) {
    const std::vector<TokenId> ids = Tok512().Encode(corpus.substr(chunk * 1000, 1000), true, false);
    ASSERT_GT(ids.size(), 512u);  // Every chunk fills the context: truncated to 512 tokens.
    std::vector<std::int64_t> row(ids.begin(), ids.begin() + 512);
    const at::Tensor logits = ForwardOrDie(Stories260K(), Tokens({row}));
    const auto n = static_cast<std::int64_t>(row.size()) - 1;
    const at::Tensor logp = at::log_softmax(logits[0].narrow(0, 0, n), -1);
    const at::Tensor targets = Tokens({row})[0].narrow(0, 1, n);
    nll -= logp.gather(1, targets.unsqueeze(1)).sum().item<double>();
    predictions += n;
  }
  EXPECT_EQ(predictions, 10220);
  EXPECT_NEAR(nll / double(predictions), 4.640, 0.02);
}

TEST(LlamaModelTest, ListsAllThirtyFiveAdaptableModulesWithNnLinearShapes) {
  const auto& modules = Stories260K().AdaptableModules();
  ASSERT_EQ(modules.size(), 35u);
  EXPECT_EQ(modules[0], (wire::ModuleInfo{"model.layers.0.self_attn.q_proj", 64, 64}));
  EXPECT_EQ(modules[1], (wire::ModuleInfo{"model.layers.0.self_attn.k_proj", 32, 64}));
  EXPECT_EQ(modules[2], (wire::ModuleInfo{"model.layers.0.self_attn.v_proj", 32, 64}));
  EXPECT_EQ(modules[3], (wire::ModuleInfo{"model.layers.0.self_attn.o_proj", 64, 64}));
  EXPECT_EQ(modules[4], (wire::ModuleInfo{"model.layers.0.mlp.gate_proj", 172, 64}));
  EXPECT_EQ(modules[5], (wire::ModuleInfo{"model.layers.0.mlp.up_proj", 172, 64}));
  EXPECT_EQ(modules[6], (wire::ModuleInfo{"model.layers.0.mlp.down_proj", 64, 172}));
  EXPECT_EQ(modules[34].name, "model.layers.4.mlp.down_proj");
}

TEST(LlamaModelTest, BaseWeightsNeverRequireGrad) {
  for (const std::string& name : Stories260K().TensorNames()) {
    EXPECT_FALSE(Stories260K().Weight(name).requires_grad()) << name;
  }
}

TEST(LlamaModelTest, ConcurrentForwardOnASharedModelMatchesSequentialForward) {
  const LlamaModel& model = Stories260K();
  std::vector<at::Tensor> inputs, expected;
  for (std::uint64_t i = 0; i < 4; ++i) {
    inputs.push_back(RandomTokens(2, 64, 100 + i));
    expected.push_back(ForwardOrDie(model, inputs.back()));
  }
  std::vector<at::Tensor> actual(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int repeat = 0; repeat < 5; ++repeat) actual[i] = ForwardOrDie(model, inputs[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (std::size_t i = 0; i < 4; ++i) EXPECT_TRUE(at::allclose(actual[i], expected[i], 0, 1e-6)) << i;
}

TEST(LlamaModelTest, ForwardRejectsTokensOutsideTheVocabulary) {
  const Status s = Stories260K().Forward(Tokens({{1, 512}})).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("512"));
  EXPECT_EQ(Stories260K().Forward(Tokens({{-1}})).status().code(), StatusCode::kInvalidArgument);
}

TEST(LlamaModelTest, ForwardRejectsWrongDtypeRankAndLength) {
  const LlamaModel& m = Stories260K();
  EXPECT_EQ(m.Forward(at::zeros({1, 4}, at::kInt)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Forward(at::zeros({4}, at::kLong)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Forward(at::zeros({1, 513}, at::kLong)).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LlamaModelTest, LoadNamesAMissingFile) {
  const Status s = LoadStatusOf("/nonexistent/model.bin");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/model.bin"));
}

TEST(LlamaModelTest, LoadReportsTruncatedFilesAsDataLossNamingThem) {
  for (const std::string& source : {LegacyModelPath(), V1ModelPath()}) {
    const std::string bytes = ReadFileBytes(source);
    for (std::size_t keep : {std::size_t{20}, std::size_t{200}, bytes.size() - 4}) {
      const std::string path = WriteTempFile("truncated_model.bin", bytes.substr(0, keep));
      const Status s = LoadStatusOf(path);
      EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
      EXPECT_THAT(s.message(), HasSubstr(path));
    }
  }
}

TEST(LlamaModelTest, LoadRejectsTrailingBytes) {
  const std::string path = WriteTempFile("long_model.bin", ReadFileBytes(V1ModelPath()) + "xxxx");
  const Status s = LoadStatusOf(path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("4 bytes after the last tensor"));
}

TEST(LlamaModelTest, LoadRejectsAnUnknownVersion) {
  std::string bytes = ReadFileBytes(V1ModelPath());
  WriteInt32(bytes, 4, 7);
  const std::string path = WriteTempFile("version7.bin", bytes);
  const Status s = LoadStatusOf(path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("unknown version 7"));
  EXPECT_THAT(s.message(), HasSubstr(path));
  WriteInt32(bytes, 4, 2);
  EXPECT_EQ(LoadStatusOf(WriteTempFile("version2.bin", bytes)).code(), StatusCode::kUnimplemented);
}

TEST(LlamaModelTest, LoadRejectsImpossibleHeaderValues) {
  const std::string legacy = ReadFileBytes(LegacyModelPath());
  struct Case {
    int field;
    std::int32_t value;
    const char* message;
  };
  for (const Case& c : {Case{3, 7, "does not divide dim"}, Case{0, 0, "dim = 0"},
                        Case{4, 3, "does not divide n_heads"}, Case{2, -1, "n_layers = -1"},
                        Case{3, 64, "odd"}}) {
    std::string bytes = legacy;
    WriteInt32(bytes, 4 * c.field, c.value);
    const std::string path = WriteTempFile("bad_header.bin", bytes);
    const Status s = LoadStatusOf(path);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    EXPECT_THAT(s.message(), HasSubstr(path));
  }
}

TEST(LlamaModelTest, LoadRejectsANonFiniteWeightNamingIt) {
  std::string bytes = ReadFileBytes(V1ModelPath());
  const float nan = std::nanf("");
  std::memcpy(&bytes[256], &nan, 4);  // First float: model.layers.0.input_layernorm.weight[0].
  const std::string path = WriteTempFile("nan_model.bin", bytes);
  const Status s = LoadStatusOf(path);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("model.layers.0.input_layernorm.weight"));
  EXPECT_THAT(s.message(), HasSubstr(path));
}

TEST(LlamaModelTest, FromTensorsNamesAMisshapenTensor) {
  const LlamaModel& base = Stories260K();
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& name : base.TensorNames()) tensors[name] = base.Weight(name);
  tensors["model.layers.2.self_attn.k_proj.weight"] = at::zeros({64, 64});
  const Status s = LlamaModel::FromTensors(base.config(), tensors).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.layers.2.self_attn.k_proj.weight"));
  tensors.erase("model.layers.2.self_attn.k_proj.weight");
  EXPECT_THAT(LlamaModel::FromTensors(base.config(), tensors).status().message(),
              HasSubstr("missing tensor 'model.layers.2.self_attn.k_proj.weight'"));
}

}  // namespace
}  // namespace fedlora::client
