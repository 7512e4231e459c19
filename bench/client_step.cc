// bench/client_step — the time of one LoRA training step of the fedlora client: TrainLora (the
// function LocalWorker calls every round) on a LoraAdapter over a frozen LlamaModel, i.e. batch
// building, forward, token loss, backward, global gradient clipping and an AdamW step.
// Its peer is bench/peers/client_step_peft.py (PyTorch eager + Hugging Face PEFT on the same
// shapes, threads and device); scripts/bench-client-step.sh runs both and prints the ratio.
//
// Models (--model, a comma-separated list; one output line each):
//   stories260k  assets/models/stories260K/stories260K.bin (260K parameters, dim 64, 5 layers)
//   small        random weights: dim 512, 8 layers, FFN 1376, 8 heads, vocab 32000 (~42M)
//   0.5b         random weights: dim 1280, 24 layers, FFN 3456, 20 heads, vocab 32000, tied
//                classifier (~517M)
// The step: LoRA rank --rank, alpha 2·rank, no dropout, on all 7 linear modules of every layer;
// AdamW with the client's defaults (wire::TrainSpec: lr 1e-3, betas 0.9/0.999, eps 1e-8, weight
// decay 0), grad clip 1.0. Every row of a batch is the same --seq-token window of a fixed
// pseudo-random stream (the peer builds the identical batch), so the first step's loss (loss0,
// before any update: B = 0) of stories260k must agree with the peer's.
//
// Timing: one untimed step (loss0), --warmup untimed steps, then --repeats TrainLora calls of
// --steps steps each (each call builds its optimiser, as a round does); ms_per_step is the best
// call's wall time / --steps. TrainLora reads the loss back every step, so the clock sees
// finished device work.
//
// Prints one line per model:
//   client_step impl=fedlora model=M params=N matmul_params=Nm trainable=Nt batch=B seq=T rank=R
//   threads=P device=D loss0=L ms_per_step=X tokens_per_s=Y model_tflops=F [mfu=U]
// model_tflops = 6 · matmul_params · B · T / step time: the standard 6·N FLOPs per token of a
// forward and backward (N = parameters that take part in matmuls: the 7 linear modules of every
// layer and the classifier, not the embedding lookup; attention's T² work is not counted, and
// LoRA's backward skips the frozen weights' gradients, so the work actually done is nearer 4·N).
// mfu = model_tflops / --peak-tflops, printed when --peak-tflops > 0 (e.g. 989 for bf16 dense on
// an H100/H200 SXM; the client computes in bf16 autocast on CUDA, float32 on the CPU).
// Run from the repository root, or pass --assets DIR.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/data/text_dataset.h"
#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "client/train/device.h"
#include "client/train/sequences.h"
#include "client/train/trainer.h"
#include "common/process.h"

namespace {

using namespace fedlora;          // NOLINT: a benchmark's main.
using namespace fedlora::client;  // NOLINT

template <typename T>
T OrDie(Result<T> result, const char* what) {
  if (!result.ok()) {
    std::fprintf(stderr, "client_step: %s: %s\n", what, result.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(result).value();
}

struct Options {
  std::string assets = "assets";
  std::string models = "stories260k";
  std::uint32_t batch = 8;
  std::uint32_t seq = 256;
  std::uint32_t rank = 8;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::uint32_t steps = 10;
  std::uint32_t warmup = 2;
  int repeats = 3;
  std::string device = "cpu";
  double peak_tflops = 0.0;
};

// The random-weight presets (HF Llama geometry; the peer has the same table).
LlamaConfig RandomPreset(const std::string& name) {
  LlamaConfig c;
  c.vocab_size = 32000;
  c.seq_len = 2048;
  c.shared_classifier = true;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  if (name == "small") {
    c.dim = 512, c.hidden_dim = 1376, c.n_layers = 8, c.n_heads = 8, c.n_kv_heads = 8;
  } else if (name == "0.5b") {
    c.dim = 1280, c.hidden_dim = 3456, c.n_layers = 24, c.n_heads = 20, c.n_kv_heads = 20;
  } else {
    std::fprintf(stderr, "client_step: unknown --model '%s' (stories260k, small, 0.5b)\n",
                 name.c_str());
    std::exit(1);
  }
  return c;
}

// A model of `config` with N(0, 0.02) weights (transformers' initializer_range) and unit norms.
std::shared_ptr<const LlamaModel> RandomModel(const LlamaConfig& c) {
  at::manual_seed(0);
  const auto normal = [](std::int64_t out, std::int64_t in) { return at::randn({out, in}) * 0.02; };
  std::map<std::string, at::Tensor> t;
  t["model.embed_tokens.weight"] = normal(c.vocab_size, c.dim);
  t["model.norm.weight"] = at::ones({c.dim});
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t[p + "input_layernorm.weight"] = at::ones({c.dim});
    t[p + "post_attention_layernorm.weight"] = at::ones({c.dim});
    t[p + "self_attn.q_proj.weight"] = normal(c.q_dim(), c.dim);
    t[p + "self_attn.k_proj.weight"] = normal(c.kv_dim(), c.dim);
    t[p + "self_attn.v_proj.weight"] = normal(c.kv_dim(), c.dim);
    t[p + "self_attn.o_proj.weight"] = normal(c.dim, c.q_dim());
    t[p + "mlp.gate_proj.weight"] = normal(c.hidden_dim, c.dim);
    t[p + "mlp.up_proj.weight"] = normal(c.hidden_dim, c.dim);
    t[p + "mlp.down_proj.weight"] = normal(c.dim, c.hidden_dim);
  }
  return OrDie(LlamaModel::FromTensors(c, t), "building the random model");
}

std::shared_ptr<const LlamaModel> LoadModel(const std::string& name, const Options& o) {
  if (name == "stories260k") {
    return OrDie(LlamaModel::LoadLlama2c(o.assets + "/models/stories260K/stories260K.bin"),
                 "loading stories260K");
  }
  return RandomModel(RandomPreset(name));
}

// `length` ids in [3, vocab): x <- (1103515245 x + 12345) mod 2^31 from x = 42, id = 3 + x mod
// (vocab - 3). The peer draws the same stream.
std::vector<TokenId> FixedStream(std::size_t length, std::int64_t vocab) {
  std::vector<TokenId> out(length);
  std::uint64_t x = 42;
  for (TokenId& id : out) {
    x = (1103515245u * x + 12345u) % (1ull << 31);
    id = static_cast<TokenId>(3 + x % static_cast<std::uint64_t>(vocab - 3));
  }
  return out;
}

struct ParamCounts {
  std::int64_t total = 0;
  std::int64_t matmul = 0;  // The adaptable linear modules plus the classifier.
};

ParamCounts CountParams(const LlamaModel& model) {
  ParamCounts n;
  for (const std::string& name : model.TensorNames()) n.total += model.Weight(name).numel();
  for (std::size_t i = 0; i < model.AdaptableModules().size(); ++i) {
    n.matmul += model.ModuleWeight(i).numel();
  }
  n.matmul += model.config().vocab_size * model.config().dim;
  return n;
}

void RunOne(const std::string& name, const Options& o) {
  std::shared_ptr<const LlamaModel> model = LoadModel(name, o);
  const ParamCounts params = CountParams(*model);
  if (o.device != "cpu") {
    const at::Device where = OrDie(ResolveDevice(o.device), "resolving --device");
    model = OrDie(model->To(where), "moving the model");
  }
  const std::vector<TokenId> stream = FixedStream(o.seq, model->config().vocab_size);
  const WindowSource source(stream, std::vector<TokenWindow>(o.batch, TokenWindow{0, o.seq}),
                            Tokenizer::kBos);

  wire::LoraSpec lora;
  lora.rank = o.rank;
  lora.alpha = 2.0 * o.rank;
  lora.targets = LoraTargetNames();
  const std::unique_ptr<LoraAdapter> adapter =
      OrDie(LoraAdapter::Create(*model, lora, /*seed=*/1), "creating the adapter");
  std::int64_t trainable = 0;
  for (const at::Tensor& p : adapter->Parameters()) trainable += p.numel();

  const auto train = [&](std::uint32_t steps) {
    wire::TrainSpec spec;  // The client's defaults: AdamW lr 1e-3, betas 0.9/0.999, clip 1.0.
    spec.local_steps = steps;
    spec.batch_size = o.batch;
    spec.seq_len = o.seq;
    return OrDie(TrainLora(*model, *adapter, source, spec, /*seed=*/0), "training");
  };
  const double loss0 = train(1).loss;
  if (o.warmup > 0) train(o.warmup);
  double best = 1e300;
  for (int r = 0; r < o.repeats; ++r) best = std::min(best, train(o.steps).seconds);

  const double step_s = best / o.steps;
  const double tokens = static_cast<double>(o.batch) * o.seq;
  const double tflops = 6.0 * static_cast<double>(params.matmul) * tokens / step_s / 1e12;
  std::printf(
      "client_step impl=fedlora model=%s params=%lld matmul_params=%lld trainable=%lld batch=%u "
      "seq=%u rank=%u threads=%d device=%s loss0=%.4f ms_per_step=%.2f tokens_per_s=%.1f "
      "model_tflops=%.4f",
      name.c_str(), static_cast<long long>(params.total), static_cast<long long>(params.matmul),
      static_cast<long long>(trainable), o.batch, o.seq, o.rank, at::get_num_threads(),
      o.device.c_str(), loss0, step_s * 1e3, tokens / step_s, tflops);
  if (o.peak_tflops > 0) std::printf(" mfu=%.4f", tflops / o.peak_tflops);
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"bench_client_step: one fedlora client LoRA training step (see the header of "
               "bench/client_step.cc)"};
  app.add_option("--model", o.models, "stories260k, small, 0.5b; comma-separated for several");
  app.add_option("--batch", o.batch, "rows per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", o.seq, "tokens per row")->check(CLI::PositiveNumber);
  app.add_option("--rank", o.rank, "LoRA rank (alpha = 2 x rank)")->check(CLI::PositiveNumber);
  app.add_option("--threads", o.threads, "LibTorch intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--steps", o.steps, "timed steps per repeat")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps before timing");
  app.add_option("--repeats", o.repeats, "timed runs; the best is reported")
      ->check(CLI::PositiveNumber);
  app.add_option("--device", o.device, "cpu, cuda or cuda:N");
  app.add_option("--peak-tflops", o.peak_tflops, "device peak, for the mfu field (0: none)");
  app.add_option("--assets", o.assets, "the assets directory");
  CLI11_PARSE(app, argc, argv);

  TuneMallocForTraining();
  at::set_num_threads(o.threads);
  std::stringstream list(o.models);
  std::string name;
  while (std::getline(list, name, ',')) RunOne(name, o);
  return 0;
}
