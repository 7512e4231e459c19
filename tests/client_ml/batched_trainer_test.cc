#include "client/train/batched_trainer.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/train/trainer.h"
#include "tests/client_ml/ml_test_util.h"

namespace fedlora::client {
namespace batched_trainer_test {

using ::testing::HasSubstr;
using namespace ml_test;  // NOLINT: test helpers.

constexpr std::size_t kClients = 4;
constexpr double kTolerance = 1e-5;  // max |a - b| / max |a| per factor, float32.

// The first ~40k characters of tinyshakespeare, tokenized once, cut into kClients streams.
const std::vector<std::vector<TokenId>>& ClientStreams() {
  static const std::vector<std::vector<TokenId>> streams = [] {
    const std::string text = ReadFileBytes(ShakespearePath()).substr(0, 40000);
    const std::vector<TokenId> all = Tok512().Encode(text, false, false);
    std::vector<std::vector<TokenId>> out(kClients);
    const std::size_t part = all.size() / kClients;
    for (std::size_t k = 0; k < kClients; ++k) {
      out[k].assign(all.begin() + static_cast<std::ptrdiff_t>(k * part),
                    all.begin() + static_cast<std::ptrdiff_t>((k + 1) * part));
    }
    return out;
  }();
  return streams;
}

std::vector<std::string> AllTargets() {
  return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
}

// Every module of every target kind at `rank` with scale 16 / rank.
std::vector<LoraModuleSpec> UniformModules(std::int64_t rank) {
  std::vector<LoraModuleSpec> modules;
  for (const wire::ModuleInfo& m : Stories260K().AdaptableModules()) {
    modules.push_back({m.name, rank, 16.0 / static_cast<double>(rank)});
  }
  return modules;
}

// A twin pair of adapters: same modules, options, initialisation and dropout seed. B (and A of
// latent adapters, whose frozen B·R·A would otherwise give R no gradient) is filled with small
// deterministic values so every factor gets a gradient from the first step.
struct Twins {
  std::unique_ptr<LoraAdapter> sequential;
  std::unique_ptr<LoraAdapter> batched;
};

Twins MakeTwins(std::span<const LoraModuleSpec> modules, const LoraOptions& options,
                std::uint64_t seed) {
  Twins twins;
  for (std::unique_ptr<LoraAdapter>* slot : {&twins.sequential, &twins.batched}) {
    Result<std::unique_ptr<LoraAdapter>> adapter =
        LoraAdapter::Create(Stories260K(), modules, options, seed);
    FEDLORA_CHECK_MSG(adapter.ok(), adapter.status().ToString());
    *slot = std::move(adapter).value();
    at::Generator gen = at::detail::createCPUGenerator(seed + 1000);
    for (const std::string& name : (*slot)->ModuleNames()) {
      const at::Tensor b = (*slot)->Factor(name, LoraFactor::kB);
      const Status set = (*slot)->SetFactor(name, LoraFactor::kB,
                                             at::randn(b.sizes(), gen) * 0.02);
      FEDLORA_CHECK_MSG(set.ok(), set.ToString());
    }
  }
  return twins;
}

wire::TrainSpec SmallSpec(std::uint32_t steps, std::uint32_t batch_size = 4,
                          std::uint32_t seq_len = 64) {
  wire::TrainSpec spec;
  spec.learning_rate = 5e-3;
  spec.warmup_steps = 2;
  spec.local_steps = steps;
  spec.batch_size = batch_size;
  spec.seq_len = seq_len;
  spec.grad_clip = 0.5;  // Low enough to clip: the per-client norms matter.
  spec.weight_decay = 0.01;
  // AdamW's first steps move every parameter by about ±lr whatever its gradient's size, so a
  // gradient component at rounding level (~1e-9) whose sign differs between two float orders
  // moves its parameter 2·lr apart: 3e-3 relative, seen with LibTorch 2.11 + MKL on 16 threads.
  // eps = 1e-3 makes such components move by lr·g/eps instead, so the comparison sees the
  // gradients each client received (any cross-talk between clients still shows at full size),
  // not the sign of rounding noise.
  spec.eps = 1e-3;
  return spec;
}

// max |a - b| / max |a| over every factor of the twins (A, B and R where present).
double WorstRelativeDifference(const LoraAdapter& a, const LoraAdapter& b) {
  double worst = 0.0;
  for (const std::string& name : a.ModuleNames()) {
    for (LoraFactor f : {LoraFactor::kA, LoraFactor::kB, LoraFactor::kR}) {
      const at::Tensor x = a.Factor(name, f);
      const at::Tensor y = b.Factor(name, f);
      EXPECT_EQ(x.defined(), y.defined()) << name;
      if (!x.defined() || !y.defined()) continue;
      const double scale = x.abs().max().item<double>();
      const double diff = (x - y).abs().max().item<double>();
      worst = std::max(worst, scale > 0.0 ? diff / scale : diff);
    }
  }
  return worst;
}

// Trains each client alone with TrainLora and all of them with TrainLoraBatched, then compares
// every factor and the statistics.
struct Client {
  Twins twins;
  const SequenceSource* source = nullptr;
  wire::TrainSpec spec;
  std::uint64_t seed = 0;
};

void ExpectBatchedMatchesSequential(std::vector<Client>& clients,
                                    const BatchedTrainOptions& options = {}) {
  std::vector<TrainStats> sequential;
  for (Client& c : clients) {
    Result<TrainStats> stats =
        TrainLora(Stories260K(), *c.twins.sequential, *c.source, c.spec, c.seed);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    sequential.push_back(*stats);
  }
  std::vector<BatchedClient> group;
  for (Client& c : clients) group.push_back({c.twins.batched.get(), c.source, c.spec, c.seed, {}});
  Result<std::vector<TrainStats>> batched = TrainLoraBatched(Stories260K(), group, options);
  ASSERT_TRUE(batched.ok()) << batched.status().ToString();
  ASSERT_EQ(batched->size(), clients.size());
  for (std::size_t k = 0; k < clients.size(); ++k) {
    SCOPED_TRACE("client " + std::to_string(k));
    EXPECT_EQ((*batched)[k].steps, sequential[k].steps);
    EXPECT_EQ((*batched)[k].samples, sequential[k].samples);
    EXPECT_EQ((*batched)[k].tokens, sequential[k].tokens);
    EXPECT_NEAR((*batched)[k].loss, sequential[k].loss, 1e-5 * sequential[k].loss);
    EXPECT_LE(WorstRelativeDifference(*clients[k].twins.sequential, *clients[k].twins.batched),
              kTolerance);
    EXPECT_FALSE(clients[k].twins.batched->training());
    // The trainer's flat buffers are gone: every trainable tensor owns its storage again.
    for (const at::Tensor& p : clients[k].twins.batched->Parameters()) {
      EXPECT_FALSE(p.grad().defined());
      EXPECT_EQ(p.storage().nbytes(), static_cast<std::size_t>(p.numel()) * sizeof(float));
    }
    // Training happened: the factors moved away from the shared initialisation.
    const std::string first = clients[k].twins.batched->ModuleNames().front();
    const LoraFactor trained =
        clients[k].twins.batched->latent() ? LoraFactor::kR : LoraFactor::kB;
    EXPECT_GT(clients[k].twins.batched->Factor(first, trained).abs().max().item<double>(), 0.0);
  }
}

std::vector<std::unique_ptr<WindowSource>> WindowSources(std::uint32_t seq_len) {
  std::vector<std::unique_ptr<WindowSource>> sources;
  for (const std::vector<TokenId>& stream : ClientStreams()) {
    sources.push_back(std::make_unique<WindowSource>(stream, seq_len, Tokenizer::kBos));
  }
  return sources;
}

TEST(BatchedTrainerTest, MatchesSequentialTrainingWithHeterogeneousRanks) {
  const auto sources = WindowSources(64);
  const std::int64_t ranks[kClients] = {8, 4, 4, 2};
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    const std::vector<LoraModuleSpec> modules = UniformModules(ranks[k]);
    clients.push_back({MakeTwins(modules, {}, 10 + k), sources[k].get(), SmallSpec(6), 100 + k});
  }
  ExpectBatchedMatchesSequential(clients);
}

TEST(BatchedTrainerTest, MatchesSequentialTrainingOfSketchedLatentFrozenAndPrunedAdapters) {
  const auto sources = WindowSources(64);
  const std::vector<wire::ModuleInfo>& all = Stories260K().AdaptableModules();
  std::vector<Client> clients;
  // A standard rank-8 adapter with the HetLoRA tail penalty.
  clients.push_back({MakeTwins(UniformModules(8), {}, 1), sources[0].get(), SmallSpec(5), 7});
  for (auto* a : {clients[0].twins.sequential.get(), clients[0].twins.batched.get()}) {
    ASSERT_TRUE(a->SetTailPenalty(0.5, 0.05).ok());
  }
  // A sketch: some modules only, each with its own rank and scale (FSLoRA's s·R/k).
  std::vector<LoraModuleSpec> sketch;
  for (std::size_t i = 0; i < all.size(); i += 2) {
    const std::int64_t k = 1 + static_cast<std::int64_t>(i % 5);
    sketch.push_back({all[i].name, k, 2.0 * 8.0 / static_cast<double>(k)});
  }
  clients.push_back({MakeTwins(sketch, {}, 2), sources[1].get(), SmallSpec(5), 8});
  // LoRA-SB: frozen A and B, only R [r, r] trains.
  clients.push_back(
      {MakeTwins(UniformModules(4), {.latent = true}, 3), sources[2].get(), SmallSpec(5), 9});
  // FFA-LoRA: A frozen.
  clients.push_back(
      {MakeTwins(UniformModules(8), {.train_a = false}, 4), sources[3].get(), SmallSpec(5), 10});
  ExpectBatchedMatchesSequential(clients);
}

// Examples of different lengths (prompt tokens masked), dropout on, and clients with different
// batch sizes and step counts, so rows are padded and finished clients drop out.
// Per client, `count` examples cut from its stream: example i of client k has
// min_length + (i * a + k * b) % spread tokens, the first length / prompt_div + 1 of them prompt.
struct ExampleShape {
  std::size_t count, min_length, a, b, spread, prompt_div;
};
std::vector<std::unique_ptr<ExampleSource>> ExampleSources(const ExampleShape& shape) {
  std::vector<std::unique_ptr<ExampleSource>> sources;
  for (std::size_t k = 0; k < kClients; ++k) {
    const std::vector<TokenId>& stream = ClientStreams()[k];
    std::vector<SequenceView> examples;
    std::size_t begin = 0;
    for (std::size_t i = 0; i < shape.count; ++i) {
      const std::size_t length = shape.min_length + (i * shape.a + k * shape.b) % shape.spread;
      examples.push_back({std::span<const TokenId>(stream.data() + begin, length),
                          1 + length / shape.prompt_div});
      begin += length;
    }
    Result<ExampleSource> source = ExampleSource::Make(std::move(examples), 256, 0);
    FEDLORA_CHECK_MSG(source.ok(), source.status().ToString());
    sources.push_back(std::make_unique<ExampleSource>(std::move(source).value()));
  }
  return sources;
}

TEST(BatchedTrainerTest, MatchesSequentialTrainingOnExamplesOfDifferentLengthsWithDropout) {
  const auto sources = ExampleSources({12, 12, 17, 29, 70, 3});
  const std::uint32_t steps[kClients] = {7, 4, 6, 2};
  const std::uint32_t batch_sizes[kClients] = {3, 4, 2, 5};
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    const std::vector<LoraModuleSpec> modules = UniformModules(k == 1 ? 2 : 4);
    clients.push_back({MakeTwins(modules, {.dropout = 0.1}, 20 + k), sources[k].get(),
                       SmallSpec(steps[k], batch_sizes[k]), 200 + k});
  }
  clients[2].spec.local_epochs = 2;  // 2 * ceil(12 / 2) = 12 steps, two shuffles.
  ExpectBatchedMatchesSequential(clients);
}

// Examples of different lengths without dropout, equal ranks and batch sizes: the stacked
// matmuls run over the padded batch (LoRA on padded positions too, which no real position or loss
// reads), and the factors still match sequential training.
TEST(BatchedTrainerTest, MatchesSequentialTrainingWhenStackedMatmulsCoverPaddedRows) {
  const auto sources = ExampleSources({8, 10, 23, 31, 60, 4});
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    clients.push_back({MakeTwins(UniformModules(4), {}, 60 + k), sources[k].get(), SmallSpec(4, 2),
                       600 + k});
  }
  ExpectBatchedMatchesSequential(clients);
}

// Equal ranks, no dropout, batch sizes 3, 4, 2 and 5 in one pass: the stacked matmuls pad the
// clients with fewer rows to 5 (zero rows in, their outputs dropped), same factors as sequential.
TEST(BatchedTrainerTest, MatchesSequentialTrainingWhenStackedMatmulsPadClientsWithFewerRows) {
  const auto sources = WindowSources(48);
  const std::uint32_t batch_sizes[kClients] = {3, 4, 2, 5};
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    clients.push_back({MakeTwins(UniformModules(8), {}, 70 + k), sources[k].get(),
                       SmallSpec(4, batch_sizes[k], 48), 700 + k});
  }
  ExpectBatchedMatchesSequential(clients);
}

// Batch sizes 3, 4, 2 and 5 with at most 6 rows per pass: passes of clients {0}, {1, 2}, {3}.
TEST(BatchedTrainerTest, MatchesSequentialTrainingWhenStepsAreSplitIntoSeveralPasses) {
  const auto sources = WindowSources(48);
  const std::uint32_t batch_sizes[kClients] = {3, 4, 2, 5};
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    clients.push_back({MakeTwins(UniformModules(4), {}, 30 + k), sources[k].get(),
                       SmallSpec(4, batch_sizes[k], 48), 300 + k});
  }
  ExpectBatchedMatchesSequential(clients, {.max_rows_per_pass = 6});
}

// Equal ranks, scales and batch sizes without dropout: every module's K LoRA products run as two
// batched matmuls over the stacked factors (the Punica form), and still equal sequential training.
TEST(BatchedTrainerTest, MatchesSequentialTrainingWhenEqualAdaptersShareStackedMatmuls) {
  const auto sources = WindowSources(64);
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    clients.push_back({MakeTwins(UniformModules(8), {}, 40 + k), sources[k].get(), SmallSpec(4),
                       400 + k});
  }
  ExpectBatchedMatchesSequential(clients);
}

// One client of another rank in the group: modules fall back to per-client products for the
// whole group, with the same results.
TEST(BatchedTrainerTest, MatchesSequentialTrainingWhenOneRankDiffersFromTheOthers) {
  const auto sources = WindowSources(64);
  std::vector<Client> clients;
  for (std::size_t k = 0; k < kClients; ++k) {
    clients.push_back({MakeTwins(UniformModules(k == 2 ? 4 : 8), {}, 50 + k), sources[k].get(),
                       SmallSpec(4), 500 + k});
  }
  ExpectBatchedMatchesSequential(clients);
}

TEST(BatchedTrainerTest, RefusesAClientWithAnEmptySource) {
  const auto sources = WindowSources(64);
  const std::vector<TokenId> nothing;
  const WindowSource empty(nothing, 64, Tokenizer::kBos);
  Twins a = MakeTwins(UniformModules(2), {}, 1), b = MakeTwins(UniformModules(2), {}, 2);
  const std::vector<BatchedClient> group = {
      {a.batched.get(), sources[0].get(), SmallSpec(2), 1, {}},
      {b.batched.get(), &empty, SmallSpec(2), 2, {}}};
  const Result<std::vector<TrainStats>> result = TrainLoraBatched(Stories260K(), group);
  EXPECT_EQ(result.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("client 1"));
  // Nothing was trained.
  EXPECT_EQ(WorstRelativeDifference(*a.sequential, *a.batched), 0.0);
}

TEST(BatchedTrainerTest, RefusesClientsWithDifferentBaseOverlaysOrOneSharedAdapter) {
  const auto sources = WindowSources(64);
  Twins a = MakeTwins(UniformModules(2), {}, 1), b = MakeTwins(UniformModules(2), {}, 2);
  std::vector<at::Tensor> overlay(Stories260K().AdaptableModules().size());
  overlay[0] = Stories260K().ModuleWeight(0).clone();
  std::vector<BatchedClient> group = {{a.batched.get(), sources[0].get(), SmallSpec(2), 1, overlay},
                                      {b.batched.get(), sources[1].get(), SmallSpec(2), 2, {}}};
  Result<std::vector<TrainStats>> result = TrainLoraBatched(Stories260K(), group);
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("base weights"));

  group[1].adapter = a.batched.get();
  group[1].base_weights = overlay;
  result = TrainLoraBatched(Stories260K(), group);
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("share one adapter"));
}

// A source that requests a stop when its batch number `stop_at` (0-based) is built: the trainer
// then stops before the next step, with no sleeps or threads involved.
class StoppingSource final : public SequenceSource {
 public:
  StoppingSource(const SequenceSource& inner, std::stop_source& stop, int stop_at)
      : inner_(inner), stop_(stop), stop_at_(stop_at) {}
  std::size_t size() const override { return inner_.size(); }
  Batch MakeBatch(std::span<const std::size_t> picks) const override {
    if (made_++ == stop_at_) stop_.request_stop();
    return inner_.MakeBatch(picks);
  }
  std::uint64_t CountTargets(std::span<const std::size_t> picks) const override {
    return inner_.CountTargets(picks);
  }

 private:
  const SequenceSource& inner_;
  std::stop_source& stop_;
  int stop_at_;
  mutable int made_ = 0;
};

TEST(BatchedTrainerTest, CancellationStopsBeforeTheNextStepAndLeavesAdaptersInEvaluationMode) {
  const auto sources = WindowSources(64);
  std::stop_source stop;
  const StoppingSource stopping(*sources[0], stop, 2);
  Twins a = MakeTwins(UniformModules(2), {}, 1), b = MakeTwins(UniformModules(4), {}, 2);
  const std::vector<BatchedClient> group = {
      {a.batched.get(), &stopping, SmallSpec(10), 1, {}},
      {b.batched.get(), sources[1].get(), SmallSpec(10), 2, {}}};
  const Result<std::vector<TrainStats>> result =
      TrainLoraBatched(Stories260K(), group, {}, stop.get_token());
  EXPECT_EQ(result.status().code(), StatusCode::kCancelled);
  EXPECT_THAT(result.status().message(), HasSubstr("after 3 of 10 steps"));
  EXPECT_FALSE(a.batched->training());
  EXPECT_FALSE(b.batched->training());
  // The three steps done are kept: they equal three sequential steps.
  ASSERT_TRUE(TrainLora(Stories260K(), *b.sequential, *sources[1], SmallSpec(3), 2).ok());
  EXPECT_LE(WorstRelativeDifference(*b.sequential, *b.batched), kTolerance);

  // A stop requested before the call trains nothing.
  Twins c = MakeTwins(UniformModules(2), {}, 3);
  const std::vector<BatchedClient> one = {{c.batched.get(), sources[2].get(), SmallSpec(2), 3, {}}};
  EXPECT_EQ(TrainLoraBatched(Stories260K(), one, {}, stop.get_token()).status().code(),
            StatusCode::kCancelled);
  EXPECT_EQ(WorstRelativeDifference(*c.sequential, *c.batched), 0.0);
}

}  // namespace batched_trainer_test
}  // namespace fedlora::client
