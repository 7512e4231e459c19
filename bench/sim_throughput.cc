// bench/sim_throughput — how many client training steps per second the simulator gets when K
// virtual clients share one stories260K base, batched (TrainLoraBatched: the active clients' rows
// through shared forward/backward passes) against sequential (K TrainLora calls one after
// another), measured in the same run, alternating, on the same adapters and data.
//
// Each client: a rank-8 LoRA on all 7 module kinds, batch 4, 128-token windows (--batch,
// --seq-len) of its own contiguous 1/64 of tinyshakespeare (the same share whatever K is). After a warm-up step each
// way, `--steps` steps per client are timed each way (best of `--repeats`). Prints one line per K:
//   K=<k> batched=<client-steps/s> sequential=<client-steps/s> ratio=<batched/sequential>
//   peak_rss_mb=<peak resident set of the process so far (getrusage), i.e. up to this K>
// Flags: --clients 1,4,16,64  --steps 3  --repeats 1  --threads <cores>  --assets assets
//   --batch 4 --seq-len 128 (each client's micro-batch: rows and tokens per row)
//   --device cpu|cuda|cuda:N (where the model and adapters live; bf16 autocast on CUDA)
//   --max-rows 16 (BatchedTrainOptions::max_rows_per_pass; 0 = every client in one pass, which on
//   a 2-core CPU was slower from K=16 on and needs ~3.2 GB at K=64 against ~0.4 GB)
//   --only batched|sequential (time one way only, for profiling; the ratio is then meaningless).
// Run from the repository root, or pass --assets DIR.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "client/train/batched_trainer.h"
#include "client/train/device.h"
#include "client/train/sequences.h"
#include "client/train/trainer.h"
#include "common/process.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;          // NOLINT: a benchmark's main.
using namespace fedlora::client;  // NOLINT

constexpr std::size_t kShares = 64;  // tinyshakespeare is cut into this many client shares.

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

template <typename T>
T OrDie(Result<T> result, const char* what) {
  if (!result.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, result.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(result).value();
}

std::vector<std::size_t> ParseList(const std::string& text) {
  std::vector<std::size_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoul(item));
  return out;
}

wire::TrainSpec Spec(std::uint32_t steps, std::uint32_t batch, std::uint32_t seq_len) {
  wire::TrainSpec spec;
  spec.learning_rate = 1e-3;
  spec.local_steps = steps;
  spec.batch_size = batch;
  spec.seq_len = seq_len;
  spec.grad_clip = 1.0;
  return spec;
}

}  // namespace

int main(int argc, char** argv) {
  std::string assets = "assets";
  std::vector<std::size_t> ks = {1, 4, 16, 64};
  std::uint32_t steps = 3;
  std::uint32_t batch = 4, seq_len = 128;
  std::string device = "cpu";
  int repeats = 1;
  BatchedTrainOptions options;
  options.max_rows_per_pass = 16;  // 4 clients per pass: the best of 0/8/16/32 on a 2-core CPU.
  std::string only;  // "batched" or "sequential": time only that way (for profiling).
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--assets") assets = argv[i + 1];
    if (flag == "--clients") ks = ParseList(argv[i + 1]);
    if (flag == "--steps") steps = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    if (flag == "--only") only = argv[i + 1];
    if (flag == "--device") device = argv[i + 1];
    if (flag == "--batch") batch = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    if (flag == "--seq-len") seq_len = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    if (flag == "--max-rows") {
      options.max_rows_per_pass = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    }
  }
  TuneMallocForTraining();
  at::set_num_threads(threads);

  std::shared_ptr<const LlamaModel> model = OrDie(
      LlamaModel::LoadLlama2c(assets + "/models/stories260K/stories260K.bin"), "loading model");
  if (device != "cpu") {
    const at::Device where = OrDie(ResolveDevice(device), "resolving --device");
    model = OrDie(model->To(where), "moving the model");
  }
  const Tokenizer tokenizer =
      OrDie(Tokenizer::Load(assets + "/models/stories260K/tok512.bin", 512), "loading tokenizer");
  const std::string text =
      OrDie(ReadTextFile(assets + "/datasets/tinyshakespeare/input.txt"), "reading text");
  const std::vector<TokenId> tokens = tokenizer.Encode(text, false, false);
  const std::size_t share = tokens.size() / kShares;
  std::vector<std::vector<TokenId>> streams(kShares);
  std::vector<std::unique_ptr<WindowSource>> sources;
  for (std::size_t k = 0; k < kShares; ++k) {
    streams[k].assign(tokens.begin() + static_cast<std::ptrdiff_t>(k * share),
                      tokens.begin() + static_cast<std::ptrdiff_t>((k + 1) * share));
    sources.push_back(std::make_unique<WindowSource>(streams[k], seq_len, Tokenizer::kBos));
  }
  wire::LoraSpec lora;
  lora.rank = 8;
  lora.alpha = 16;
  lora.targets = LoraTargetNames();

  for (const std::size_t k : ks) {
    if (k == 0 || k > kShares) {
      std::fprintf(stderr, "K=%zu: must be in [1, %zu]\n", k, kShares);
      return 1;
    }
    std::vector<std::unique_ptr<LoraAdapter>> adapters;
    const std::string first_module = model->AdaptableModules().front().name;
    for (std::size_t c = 0; c < k; ++c) {
      adapters.push_back(OrDie(LoraAdapter::Create(*model, lora, c + 1), "creating adapter"));
    }
    const auto group = [&](std::uint32_t n) {
      std::vector<BatchedClient> clients;
      for (std::size_t c = 0; c < k; ++c) {
        clients.push_back({adapters[c].get(), sources[c].get(), Spec(n, batch, seq_len), c, {}});
      }
      return clients;
    };
    const auto sequential = [&](std::uint32_t n) {
      for (std::size_t c = 0; c < k; ++c) {
        OrDie(TrainLora(*model, *adapters[c], *sources[c], Spec(n, batch, seq_len), c), "sequential training");
      }
    };
    // Warm-up: one step each way (allocator, thread pool, OpenBLAS buffers).
    OrDie(TrainLoraBatched(*model, group(1), options), "batched warm-up");
    sequential(1);

    double batched_best = 1e300, sequential_best = 1e300;
    for (int r = 0; r < repeats; ++r) {
      const std::vector<BatchedClient> clients = group(steps);
      // Reading a factor back waits for the device's queue: the clocks see finished work.
      const auto sync = [&] { (void)adapters.back()->Factor(first_module, LoraFactor::kB); };
      sync();
      const Clock::time_point b0 = Clock::now();
      if (only != "sequential") {
        OrDie(TrainLoraBatched(*model, clients, options), "batched training");
      }
      sync();
      const Clock::time_point b1 = Clock::now();
      if (only != "batched") sequential(steps);
      sync();
      const Clock::time_point s1 = Clock::now();
      batched_best = std::min(batched_best, Seconds(b0, b1));
      sequential_best = std::min(sequential_best, Seconds(b1, s1));
    }
    const double client_steps = static_cast<double>(k) * steps;
    const double batched = client_steps / batched_best;
    const double seq = client_steps / sequential_best;
    std::printf("K=%zu batched=%.2f sequential=%.2f ratio=%.2f peak_rss_mb=%.0f\n", k, batched,
                seq, batched / seq, static_cast<double>(PeakRssBytes()) / (1 << 20));
    std::fflush(stdout);
  }
  return 0;
}
