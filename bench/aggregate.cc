// bench/aggregate — how fast each strategy folds N uploads through the real strategy code
// (Strategy::Begin, RoundAccumulator::Fold per upload, Finish), against memcpy of the same bytes
// measured in the same process, and the process's peak RSS.
//
// Each (strategy, N) runs in a child process of its own, so peak_rss_mb is that run's alone.
// Uploads: K = 4 distinct random adapters of the chosen shape, replayed under N client ids (the
// fold does the same work for a copy; generating N distinct 16 MB adapters would only time the
// random generator). fedex, flora and lorafair keep each module's client factors until they
// outgrow the dense d_out x d_in sum (server/strategies/product_sums.h), then fold products into
// an exact dense sum; their Finish also compacts the base-correction log (QR + SVD).
//
// Prints per run:
//   aggregate strategy=<s> n=<N> shape=<shape> upload_mb=<MB> fold_s=<s> finish_s=<s>
//     gbps=<N x upload bytes / (fold_s + finish_s)> memcpy_gbps=<...> ratio=<gbps/memcpy_gbps>
//     peak_rss_mb=<MB>
// and, at the end, each strategy's time relative to fedavg's at the same N.
//
// Flags: --strategies fedavg,fedsb,fedex,flora,lorafair  --n 10,100,1000
//   --shape adapter16mb|llama8b-r16  --threads 1 (LibTorch intra-op threads, as the coordinator;
//   on a busy 2-core machine 2 threads made Finish 6x slower: OpenMP workers spin)
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/lora/adapter_layout.h"
#include "server/strategies/make_strategy.h"

namespace {

using namespace fedlora;          // NOLINT: a benchmark's main.
using namespace fedlora::server;  // NOLINT
using Clock = std::chrono::steady_clock;

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

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The model layout of a shape and the LoRA spec trained on it.
struct Shape {
  ModelLayout layout;
  wire::LoraSpec lora;
};

Shape MakeShape(const std::string& name) {
  Shape s;
  s.layout.base_model_sha256 = std::string(64, 'b');
  if (name == "llama8b-r16") {
    // Llama-3-8B: 32 layers, hidden 4096, 8 KV heads of 128, MLP 14336; rank 16 on all seven.
    const std::vector<std::tuple<std::string, std::int64_t, std::int64_t>> kinds = {
        {"self_attn.q_proj", 4096, 4096}, {"self_attn.k_proj", 1024, 4096},
        {"self_attn.v_proj", 1024, 4096}, {"self_attn.o_proj", 4096, 4096},
        {"mlp.gate_proj", 14336, 4096},   {"mlp.up_proj", 14336, 4096},
        {"mlp.down_proj", 4096, 14336}};
    for (int layer = 0; layer < 32; ++layer) {
      for (const auto& [kind, d_out, d_in] : kinds) {
        s.layout.modules.push_back(
            {"model.layers." + std::to_string(layer) + "." + kind, d_out, d_in});
      }
    }
    s.lora = {
        .rank = 16,
        .alpha = 32,
        .targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}};
  } else if (name == "adapter16mb") {
    // 64 square 2048-wide projections at rank 16: 64 x 2 x 16 x 2048 f32 = 16 MiB.
    for (int layer = 0; layer < 32; ++layer) {
      for (const char* kind : {"self_attn.q_proj", "self_attn.o_proj"}) {
        s.layout.modules.push_back(
            {"model.layers." + std::to_string(layer) + "." + kind, 2048, 2048});
      }
    }
    s.lora = {.rank = 16, .alpha = 32, .targets = {"q_proj", "o_proj"}};
  } else {
    std::fprintf(stderr, "unknown --shape %s (adapter16mb, llama8b-r16)\n", name.c_str());
    std::exit(2);
  }
  return s;
}

// An upload answering `task`: small random values of the expected shapes.
ClientUpdate RandomUpload(const ClientTask& task, std::mt19937_64& rng) {
  ClientUpdate u;
  u.client_id = task.client_id;
  u.num_examples = 100 + rng() % 100;
  u.num_samples = 16;
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (const auto& [name, e] : task.expected_upload) {
    std::vector<float> v(static_cast<std::size_t>(OrDie(NumElements(e.spec.shape), "shape")));
    for (float& x : v) x = normal(rng);
    u.tensors[name] = MakeF32(e.spec.shape, v);
  }
  return u;
}

std::string ClientId(std::size_t k) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "c%06zu", k);
  return buf;
}

// The N uploads, generated from K distinct ones by renaming (in place, one at a time).
class ReplayedUploads final : public UploadSource {
 public:
  ReplayedUploads(std::vector<ClientUpdate>& base, const std::vector<ClientTask>& tasks,
                  std::size_t n)
      : base_(base), tasks_(tasks), n_(n) {}
  std::size_t size() const override { return n_; }
  Status ForEach(
      const std::function<Status(const ClientUpdate&, const ClientTask&)>& fn) const override {
    for (std::size_t k = 0; k < n_; ++k) {
      ClientUpdate& u = base_[k % base_.size()];
      u.client_id = ClientId(k);
      FEDLORA_RETURN_IF_ERROR(fn(u, tasks_[k % tasks_.size()]));
    }
    return OkStatus();
  }
  Status ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                    std::vector<std::vector<double>>& out) const override {
    out.resize(n_);
    for (std::size_t k = 0; k < n_; ++k) {
      const Tensor& t = base_[k % base_.size()].tensors.at(std::string(name));
      FEDLORA_ASSIGN_OR_RETURN(out[k], SliceAsDoubles(t.dtype, t.data, begin, count, name));
    }
    return OkStatus();
  }

 private:
  std::vector<ClientUpdate>& base_;
  const std::vector<ClientTask>& tasks_;
  std::size_t n_;
};

double PeakRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

int RunOne(const std::string& strategy_name, std::size_t n, const std::string& shape_name) {
  const Shape shape = MakeShape(shape_name);
  StrategyContext context;
  context.lora = shape.lora;
  context.train.upload_dtype = DType::kF32;
  context.seed = 1;
  StrategyConfig config;
  config.name = strategy_name;
  std::unique_ptr<Strategy> strategy = OrDie(MakeStrategy(config, context), "strategy");
  GlobalState state = OrDie(strategy->Initialize(shape.layout, std::nullopt), "initialize");
  std::mt19937_64 rng(7);
  if (ClientInitialization* init = strategy->client_initialization()) {
    const ClientTask task =
        OrDie(init->ConfigureInit(state, ClientInfo{"init", {}, {}, {}}), "init");
    ClientUpdate u = RandomUpload(task, rng);
    if (Status s = init->AcceptInit(state, u); !s.ok()) {
      std::fprintf(stderr, "init: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  constexpr std::size_t kDistinct = 4;
  std::vector<ClientInfo> infos;
  for (std::size_t k = 0; k < kDistinct; ++k) infos.push_back(ClientInfo{ClientId(k), {}, {}, {}});
  const std::vector<ClientTask> tasks = OrDie(strategy->Configure(state, 1, infos), "configure");
  std::vector<ClientUpdate> base;
  for (const ClientTask& t : tasks) base.push_back(RandomUpload(t, rng));
  const double upload_bytes = static_cast<double>(PayloadBytes(base.front().tensors));
  // Baseline: memcpy of the same bytes, upload by upload, in this process.
  std::vector<std::vector<std::byte>> flat(kDistinct);
  for (std::size_t k = 0; k < kDistinct; ++k) {
    for (const auto& [name, t] : base[k].tensors) {
      flat[k].insert(flat[k].end(), t.data.begin(), t.data.end());
    }
  }
  std::vector<std::byte> sink(flat.front().size());
  const Clock::time_point m0 = Clock::now();
  for (std::size_t k = 0; k < n; ++k) {
    std::memcpy(sink.data(), flat[k % kDistinct].data(), sink.size());
  }
  const double memcpy_s = Seconds(m0, Clock::now());
  volatile std::byte keep = sink[sink.size() / 2];
  (void)keep;
  flat.clear();
  flat.shrink_to_fit();

  std::unique_ptr<RoundAccumulator> acc = OrDie(strategy->Begin(state, 1), "begin");
  const Clock::time_point t0 = Clock::now();
  for (std::size_t k = 0; k < n; ++k) {
    ClientUpdate& u = base[k % kDistinct];
    u.client_id = ClientId(k);
    if (Status s = acc->Fold(u, tasks[k % kDistinct]); !s.ok()) {
      std::fprintf(stderr, "fold: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  const Clock::time_point t1 = Clock::now();
  GlobalState next = state;
  const AggregateReport report =
      OrDie(acc->Finish(next, ReplayedUploads(base, tasks, n)), "finish");
  const Clock::time_point t2 = Clock::now();
  (void)report;
  const double bytes = upload_bytes * static_cast<double>(n);
  const double total_s = Seconds(t0, t2);
  const double gbps = bytes / total_s / 1e9, memcpy_gbps = bytes / memcpy_s / 1e9;
  std::printf(
      "aggregate strategy=%s n=%zu shape=%s upload_mb=%.1f fold_s=%.3f finish_s=%.3f "
      "gbps=%.2f memcpy_gbps=%.2f ratio=%.2f peak_rss_mb=%.0f\n",
      strategy_name.c_str(), n, shape_name.c_str(), upload_bytes / 1e6, Seconds(t0, t1),
      Seconds(t1, t2), gbps, memcpy_gbps, gbps / memcpy_gbps, PeakRssMb());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Folds N uploads through each strategy; compares with memcpy (bench/aggregate)"};
  std::string strategies = "fedavg,fedsb,fedex,flora,lorafair", ns = "10,100,1000";
  std::string shape = "adapter16mb", one;
  int threads = 1;  // As the coordinator runs LibTorch (the exact folds use their own threads).
  std::size_t one_n = 0;
  app.add_option("--strategies", strategies, "Comma-separated strategy names");
  app.add_option("--n", ns, "Comma-separated upload counts");
  app.add_option("--shape", shape, "adapter16mb or llama8b-r16");
  app.add_option("--threads", threads, "LibTorch intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--one", one, "(internal) run one strategy in this process");
  app.add_option("--one-n", one_n, "(internal) its N");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  if (!one.empty()) return RunOne(one, one_n, shape);

  // One child process per configuration, so each peak RSS is its own.
  std::map<std::string, double> fedavg_seconds;  // By N.
  for (const std::string& n : Split(ns)) {
    for (const std::string& s : Split(strategies)) {
      const std::string command = std::string(argv[0]) + " --one " + s + " --one-n " + n +
                                  " --shape " + shape + " --threads " + std::to_string(threads);
      FILE* child = popen(command.c_str(), "r");
      if (child == nullptr) return 1;
      char line[1024];
      while (std::fgets(line, sizeof(line), child) != nullptr) {
        std::fputs(line, stdout);
        std::fflush(stdout);
        double fold = 0, finish = 0;
        const char* f = std::strstr(line, "fold_s=");
        const char* g = std::strstr(line, "finish_s=");
        if (f != nullptr && g != nullptr) {
          fold = std::atof(f + 7);
          finish = std::atof(g + 9);
          if (s == "fedavg") {
            fedavg_seconds[n] = fold + finish;
          } else if (fedavg_seconds.contains(n)) {
            std::printf("aggregate strategy=%s n=%s time_vs_fedavg=%.2f\n", s.c_str(), n.c_str(),
                        (fold + finish) / fedavg_seconds[n]);
          }
        }
      }
      if (pclose(child) != 0) std::fprintf(stderr, "%s failed\n", command.c_str());
    }
  }
  return 0;
}
