// A SentencePiece .model tokenizer works inside a LibTorch process. Debian's libsentencepiece embeds
// and exports its own protobuf, which used to either crash every LibTorch binary at start-up or make
// SentencePiece's version check throw; sp_tokenizer.cc now reaches it only through a dlopen'ed shim.
// That this binary starts at all is half the test; the other half is below.
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "client/model/load_tokenizer.h"
#include "client/model/text_tokenizer.h"
#include "tests/client_data/test_assets.h"

namespace fedlora::client::sp_in_torch_test {

using ::testing::StartsWith;

TEST(SentencePieceInTorchProcessTest, LoadsAModelFileAndRoundTripsText) {
  // LibTorch is live in this process (and with it the system libprotobuf).
  const at::Tensor probe = at::arange(4, at::kInt);
  ASSERT_EQ(probe.sum().item<int>(), 6);

  Result<std::unique_ptr<TextTokenizer>> t =
      LoadTokenizer(testing_assets::TokenizerFixturePath("sp/tokenizer.model"), 1000);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_THAT((*t)->Describe(), StartsWith("sentencepiece"));
  EXPECT_EQ((*t)->vocab_size(), 1000);

  const std::string text = "To be, or not to be, that is the question.";
  const std::vector<TokenId> ids = (*t)->Encode(text, true, true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), (*t)->bos_id());
  EXPECT_EQ(ids.back(), (*t)->eos_id());
  EXPECT_EQ((*t)->Decode(ids), text);

  // The ids travel through a tensor and back unchanged.
  const at::Tensor tensor = at::tensor(std::vector<std::int32_t>(ids.begin(), ids.end()), at::kInt);
  const std::vector<TokenId> back(tensor.data_ptr<std::int32_t>(),
                                  tensor.data_ptr<std::int32_t>() + tensor.numel());
  EXPECT_EQ((*t)->Decode(back), text);
}

TEST(SentencePieceInTorchProcessTest, NoSentencePieceSymbolReachesTheGlobalScope) {
  ASSERT_TRUE(LoadTokenizer(testing_assets::TokenizerFixturePath("sp/tokenizer.model"), 0).ok());
  // SentencePieceProcessor's constructor: defined only by libsentencepiece, which the shim opened
  // with RTLD_LOCAL, so a global lookup must not find it.
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "_ZN13sentencepiece22SentencePieceProcessorC1Ev"), nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "fedlora_spm_create"), nullptr);
}

}  // namespace fedlora::client::sp_in_torch_test
