#include "client/train/per_example.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/train/sequences.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace per_example_test {

using namespace ml_test;  // NOLINT: test helpers.

constexpr double kTolerance = 1e-4;  // Relative, float32 sums of a few examples.

const std::vector<TokenId>& Stream() {
  static const std::vector<TokenId> stream =
      Tok512().Encode(ReadFileBytes(ShakespearePath()).substr(0, 12000), false, false);
  return stream;
}

// Modules of every kind (d_out != d_in for gate/up/down) at rank 4, B filled so A gets gradient.
std::unique_ptr<LoraAdapter> MakeAdapter(const LoraOptions& options) {
  std::vector<LoraModuleSpec> modules;
  for (const wire::ModuleInfo& m : Stories260K().AdaptableModules()) {
    modules.push_back({m.name, 4, 2.0});
  }
  Result<std::unique_ptr<LoraAdapter>> adapter =
      LoraAdapter::Create(Stories260K(), modules, options, 7);
  FEDLORA_CHECK_MSG(adapter.ok(), adapter.status().ToString());
  at::Generator gen = at::detail::createCPUGenerator(11);
  for (const std::string& name : (*adapter)->ModuleNames()) {
    for (LoraFactor f : {LoraFactor::kA, LoraFactor::kB, LoraFactor::kR}) {
      const at::Tensor t = (*adapter)->Factor(name, f);
      if (!t.defined()) continue;
      const Status set = (*adapter)->SetFactor(name, f, at::randn(t.sizes(), gen) * 0.05);
      FEDLORA_CHECK_MSG(set.ok(), set.ToString());
    }
  }
  return std::move(adapter).value();
}

// The reference: each example's gradient from a backward of its own, clipped, summed.
struct OneAtATime {
  std::vector<at::Tensor> sums;
  std::vector<double> norms;
};

OneAtATime Reference(LoraAdapter& adapter, const SequenceSource& source,
                     const std::vector<std::size_t>& picks, double clip) {
  const std::vector<at::Tensor> params = adapter.Parameters();
  OneAtATime out;
  for (const at::Tensor& p : params) out.sums.push_back(at::zeros_like(p.detach()));
  for (const std::size_t pick : picks) {
    const std::size_t one[] = {pick};
    const Batch batch = source.MakeBatch(one);
    Result<at::Tensor> logits = Stories260K().Forward(batch.inputs, &adapter);
    FEDLORA_CHECK_MSG(logits.ok(), logits.status().ToString());
    const at::Tensor loss =
        at::cross_entropy_loss(logits->reshape({-1, logits->size(-1)}), batch.targets.reshape({-1}),
                               {}, at::Reduction::Mean, kIgnoreIndex);
    for (const at::Tensor& p : params) p.mutable_grad() = at::Tensor();
    loss.backward();
    double squared = 0;
    for (const at::Tensor& p : params)
      squared += p.grad().to(at::kDouble).pow(2).sum().item<double>();
    const double norm = std::sqrt(squared);
    out.norms.push_back(norm);
    const double coef = std::min(1.0, clip / (norm + 1e-6));
    for (std::size_t k = 0; k < params.size(); ++k) out.sums[k] += params[k].grad() * coef;
  }
  for (const at::Tensor& p : params) p.mutable_grad() = at::Tensor();
  return out;
}

double RelativeDifference(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-12);
  return (a - b).abs().max().item<double>() / scale;
}

// Clips near the median reference norm (so some examples are clipped and some are not), then
// compares the vectorised sum with the reference.
void ExpectEqualsOneAtATime(LoraAdapter& adapter, const SequenceSource& source,
                            const std::vector<std::size_t>& picks, std::size_t max_rows) {
  const OneAtATime unclipped = Reference(adapter, source, picks, 1e30);
  std::vector<double> sorted = unclipped.norms;
  std::sort(sorted.begin(), sorted.end());
  const std::size_t mid = sorted.size() / 2;
  const double clip = (sorted[mid - 1] + sorted[mid]) / 2;  // Between two norms: no tie.
  const OneAtATime expected = Reference(adapter, source, picks, clip);

  Result<ClippedGradients> got =
      ClippedGradientSum(Stories260K(), adapter, source, picks, clip, max_rows);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->norms.size(), picks.size());
  std::uint64_t clipped = 0;
  for (std::size_t e = 0; e < picks.size(); ++e) {
    EXPECT_NEAR(got->norms[e], expected.norms[e], kTolerance * expected.norms[e])
        << "example " << e;
    if (expected.norms[e] > clip) ++clipped;
  }
  EXPECT_EQ(got->clipped, clipped);
  EXPECT_GT(clipped, 0u);
  EXPECT_LT(clipped, picks.size());
  ASSERT_EQ(got->sums.size(), expected.sums.size());
  for (std::size_t k = 0; k < expected.sums.size(); ++k) {
    EXPECT_LT(RelativeDifference(got->sums[k], expected.sums[k]), kTolerance) << "tensor " << k;
  }
  // The adapter's own tensors got no gradient from the vectorised pass.
  for (const at::Tensor& p : adapter.Parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(PerExampleGradientTest, ClippedSumEqualsClippingEachExampleGradientComputedAlone) {
  const WindowSource source(Stream(), 48, Tokenizer::kBos);
  std::unique_ptr<LoraAdapter> adapter = MakeAdapter({});
  ExpectEqualsOneAtATime(*adapter, source, {0, 3, 4, 9, 17, 21, 30}, 16);
}

TEST(PerExampleGradientTest, ExamplesOfDifferentLengthsInSeveralPassesGiveTheSameSum) {
  // Padding (right, ignored targets) and prompt masking must not leak between examples.
  std::vector<SequenceView> views;
  const std::vector<TokenId>& s = Stream();
  for (std::size_t i = 0; i < 6; ++i) {
    const std::size_t len = 12 + 7 * i;
    views.push_back({std::span<const TokenId>(s).subspan(100 * i, len), 1 + i});
  }
  Result<ExampleSource> source = ExampleSource::Make(std::move(views), 256, 0);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  std::unique_ptr<LoraAdapter> adapter = MakeAdapter({});
  ExpectEqualsOneAtATime(*adapter, *source, {0, 1, 2, 3, 4, 5}, 4);
}

TEST(PerExampleGradientTest, OnlyTrainableFactorsGetPerExampleCopiesForFfaAndLatentAdapters) {
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  std::unique_ptr<LoraAdapter> ffa = MakeAdapter({.train_a = false});
  ExpectEqualsOneAtATime(*ffa, source, {1, 2, 5, 8, 13}, 8);
  std::unique_ptr<LoraAdapter> latent = MakeAdapter({.latent = true});  // Fed-SB: only R.
  ExpectEqualsOneAtATime(*latent, source, {1, 2, 5, 8, 13}, 8);
}

TEST(PerExampleGradientTest, RefusesABadClipAndGivesZerosForNoExamples) {
  const WindowSource source(Stream(), 32, Tokenizer::kBos);
  std::unique_ptr<LoraAdapter> adapter = MakeAdapter({});
  const std::size_t picks[] = {0};
  EXPECT_EQ(ClippedGradientSum(Stories260K(), *adapter, source, picks, 0.0, 4).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ClippedGradientSum(Stories260K(), *adapter, source, picks, 1.0, 0).status().code(),
            StatusCode::kInvalidArgument);
  Result<ClippedGradients> none = ClippedGradientSum(Stories260K(), *adapter, source, {}, 1.0, 4);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  for (const at::Tensor& sum : none->sums) EXPECT_EQ(sum.abs().max().item<double>(), 0.0);
}

}  // namespace per_example_test
}  // namespace fedlora::client
