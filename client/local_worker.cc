// local_worker.cc — the door between the torch-free Worker interface and the LibTorch stack:
// model + tokenizer (ModelAssets), the client's tokenized data, LoRA training and evaluation.
#include "client/local_worker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <thread>

#include "client/data/text_dataset.h"
#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/model/tokenizer.h"
#include "client/train/trainer.h"

namespace fedlora::client {

class ModelAssets {
 public:
  ModelAssets(std::shared_ptr<const LlamaModel> model, Tokenizer tokenizer)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {}
  const LlamaModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  std::shared_ptr<const LlamaModel> model_;
  Tokenizer tokenizer_;
};

namespace {

constexpr std::string_view kSoftwareVersion = "fedlora 0.1.0";
constexpr std::uint32_t kDescribeSeqLen = 128;  // Window length Hello's num_examples counts.
// Salts that separate the streams derived from one seed.
constexpr std::uint64_t kInitSalt = 0x1A17;
constexpr std::uint64_t kDropoutSalt = 0xD0;
constexpr std::uint64_t kOrderSalt = 0x0D;

std::uint64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
}

class LocalWorker final : public Worker {
 public:
  LocalWorker(ClientConfig config, std::shared_ptr<const ModelAssets> assets,
              LocalWorkerOptions options, ClientData data)
      : config_(std::move(config)),
        assets_(std::move(assets)),
        options_(options),
        data_(std::move(data)) {
    const LlamaModel& model = assets_->model();
    hello_.client_name = config_.name;
    hello_.software_version = std::string(kSoftwareVersion);
    hello_.base_model_sha256 = model.Digest();
    hello_.capabilities.device = config_.device;
    hello_.capabilities.memory_bytes = config_.capabilities.memory_bytes != 0
                                           ? config_.capabilities.memory_bytes
                                           : PhysicalMemoryBytes();
    hello_.capabilities.max_rank = config_.capabilities.max_rank;
    hello_.capabilities.num_examples = TrainWindows(
        static_cast<std::uint32_t>(std::min<std::int64_t>(kDescribeSeqLen, model.config().seq_len)));
    hello_.capabilities.relative_speed = config_.capabilities.relative_speed;
    hello_.modules = model.AdaptableModules();
  }

  wire::Hello Describe() const override { return hello_; }

  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override try {
    FEDLORA_RETURN_IF_ERROR(CheckRank(task.lora));
    std::unique_lock<std::mutex> lock = LockCompute();
    const std::uint64_t seed =
        MixSeed(MixSeed(task.train.seed, StableHash(config_.name)), task.round);
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter,
                             MakeAdapter(task.lora, task.tensors, task.train.seed));
    adapter->SetSeed(MixSeed(seed, kDropoutSalt));
    FEDLORA_ASSIGN_OR_RETURN(const TrainStats stats,
                             TrainLora(assets_->model(), *adapter, data_.train, task.train,
                                       MixSeed(seed, kOrderSalt), stop));
    wire::Update update;
    update.round = task.round;
    update.num_samples = stats.samples;
    update.num_examples = TrainWindows(task.train.seq_len);
    update.metrics = {{"train_loss", stats.loss},
                      {"steps", static_cast<double>(stats.steps)},
                      {"tokens", static_cast<double>(stats.tokens)},
                      {"seconds", stats.seconds}};
    FEDLORA_ASSIGN_OR_RETURN(update.tensors, adapter->Export(task.train.upload_dtype));
    return update;
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("client '", config_.name, "': out of memory while training round ",
                             task.round);
  } catch (const std::exception& e) {  // c10::Error and anything else LibTorch throws.
    return Internal("client '", config_.name, "': training round ", task.round, ": ", e.what());
  }

  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override
      try {
    std::unique_lock<std::mutex> lock = LockCompute();
    std::unique_ptr<LoraAdapter> adapter;
    if (!task.tensors.empty()) {
      FEDLORA_RETURN_IF_ERROR(CheckRank(task.lora));
      FEDLORA_ASSIGN_OR_RETURN(adapter, MakeAdapter(task.lora, task.tensors, task.train.seed));
    }
    const EvalOptions options{.seq_len = task.train.seq_len,
                              .batch_size = task.train.batch_size,
                              .max_batches = task.max_batches,
                              .max_windows = config_.data.max_eval_windows};
    FEDLORA_ASSIGN_OR_RETURN(
        const EvalStats stats,
        EvaluateLoss(assets_->model(), adapter.get(), data_.heldout, options, stop));
    wire::EvalResult result;
    result.round = task.round;
    result.loss = stats.loss;
    result.num_tokens = stats.tokens;
    result.num_examples = stats.windows;
    result.metrics = {{"perplexity", std::exp(stats.loss)}, {"seconds", stats.seconds}};
    return result;
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("client '", config_.name, "': out of memory while evaluating round ",
                             task.round);
  } catch (const std::exception& e) {
    return Internal("client '", config_.name, "': evaluating round ", task.round, ": ", e.what());
  }

 private:
  std::unique_lock<std::mutex> LockCompute() const {
    return options_.compute_lock != nullptr ? std::unique_lock<std::mutex>(*options_.compute_lock)
                                            : std::unique_lock<std::mutex>();
  }

  std::uint64_t TrainWindows(std::uint32_t seq_len) const {
    return seq_len == 0 ? 0 : MakeWindows(data_.train.size(), seq_len).size();
  }

  Status CheckRank(const wire::LoraSpec& lora) const {
    const std::uint32_t max_rank = config_.capabilities.max_rank;
    if (max_rank != 0 && lora.rank > max_rank) {
      return InvalidArgument("client '", config_.name, "': LoRA rank ", lora.rank,
                             " exceeds this client's max_rank ", max_rank);
    }
    return OkStatus();
  }

  // A fresh adapter for `lora`, then the task's factors. With no factors (the very first round of
  // a federation that leaves initialisation to clients) every client draws the same A from the
  // task seed alone, so their adapters start from one point.
  Result<std::unique_ptr<LoraAdapter>> MakeAdapter(const wire::LoraSpec& lora,
                                                   const TensorMap& tensors,
                                                   std::uint64_t task_seed) const {
    Result<std::unique_ptr<LoraAdapter>> adapter =
        LoraAdapter::Create(assets_->model(), lora, MixSeed(task_seed, kInitSalt));
    if (!adapter.ok()) return adapter.status().WithContext(StrCat("client '", config_.name, "'"));
    if (!tensors.empty()) {
      const Status loaded = (*adapter)->Load(tensors);
      if (!loaded.ok()) return loaded.WithContext(StrCat("client '", config_.name, "'"));
    }
    return adapter;
  }

  const ClientConfig config_;
  const std::shared_ptr<const ModelAssets> assets_;
  const LocalWorkerOptions options_;
  const ClientData data_;
  wire::Hello hello_;
};

}  // namespace

Result<std::shared_ptr<const ModelAssets>> LoadModelAssets(const ModelConfig& config) {
  if (config.format != "llama2c") {
    return InvalidArgument("model.format '", config.format,
                           "' is not supported (expected: llama2c)");
  }
  if (config.path.empty()) return InvalidArgument("model.path is empty");
  if (config.tokenizer.empty()) return InvalidArgument("model.tokenizer is empty");
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const LlamaModel> model,
                           LlamaModel::LoadLlama2c(config.path));
  FEDLORA_ASSIGN_OR_RETURN(
      Tokenizer tokenizer,
      Tokenizer::Load(config.tokenizer, static_cast<std::int32_t>(model->config().vocab_size)));
  return std::shared_ptr<const ModelAssets>(
      std::make_shared<ModelAssets>(std::move(model), std::move(tokenizer)));
}

std::string BaseModelDigest(const ModelAssets& assets) { return assets.model().Digest(); }

std::vector<wire::ModuleInfo> AdaptableModules(const ModelAssets& assets) {
  return assets.model().AdaptableModules();
}

Result<std::unique_ptr<Worker>> MakeLocalWorker(const ClientConfig& config,
                                                std::shared_ptr<const ModelAssets> assets,
                                                LocalWorkerOptions options) {
  if (assets == nullptr) return InvalidArgument("MakeLocalWorker: no model assets");
  if (config.name.empty()) return InvalidArgument("client name is empty");
  // TODO(gpu): train on CUDA when the LibTorch build has it (issue 4). Until then "auto"
  // resolves to the CPU and an explicit CUDA device is refused rather than silently ignored.
  ClientConfig resolved = config;
  if (resolved.device == "auto") resolved.device = "cpu";
  if (resolved.device != "cpu") {
    return Unimplemented("device '", config.device,
                         "' is not supported yet: fedlora trains on the cpu (use cpu or auto)");
  }
  Result<ClientData> data = LoadClientData(resolved.data, assets->tokenizer());
  if (!data.ok()) return data.status().WithContext(StrCat("client '", resolved.name, "'"));
  return std::unique_ptr<Worker>(std::make_unique<LocalWorker>(
      std::move(resolved), std::move(assets), options, std::move(data).value()));
}

void ConfigureTorchThreads(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(threads));
}

}  // namespace fedlora::client
