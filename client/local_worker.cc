// local_worker.cc — the door between the torch-free Worker interface and the LibTorch stack:
// model + tokenizer (ModelAssets), the client's tokenized data, LoRA training and evaluation in
// every adapter mode of the protocol (task_adapter.h), base corrections (base_overlay.h),
// FedSA-LoRA's private B (local_factor_store.h) and the LoRA-SB initialisation. (~600 lines: the
// worker's training and evaluation paths share its private state; each part with its own job is
// already in its own file.)
#include "client/local_worker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <new>
#include <numeric>
#include <optional>
#include <thread>

#include "client/data/text_dataset.h"
#include "client/lora/local_factor_store.h"
#include "client/lora/lora_adapter.h"
#include "client/lora/task_adapter.h"
#include "client/model/base_overlay.h"
#include "client/model/llama.h"
#include "client/model/load_tokenizer.h"
#include "client/model/text_tokenizer.h"
#include "client/torch_bridge.h"
#include "client/train/client_dataset.h"
#include "client/train/device.h"
#include "client/train/private_training.h"
#include "client/train/trainer.h"
#include "client/train/training_batcher.h"
#include "common/log.h"
#include "common/lora/factor_math.h"
#include "common/process.h"

namespace fedlora::client {

class ModelAssets {
 public:
  ModelAssets(std::shared_ptr<const LlamaModel> model, std::unique_ptr<TextTokenizer> tokenizer,
              std::string device)
      : model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        device_(std::move(device)),
        overlays_(std::make_shared<BaseOverlayCache>()) {}
  const LlamaModel& model() const { return *model_; }
  const TextTokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& device() const { return device_; }  // "cpu", "cuda:0", ...
  // Corrected base weights shared by the workers on these assets (thread-safe).
  BaseOverlayCache& overlays() const { return *overlays_; }

 private:
  std::shared_ptr<const LlamaModel> model_;
  std::unique_ptr<TextTokenizer> tokenizer_;
  std::string device_;
  std::shared_ptr<BaseOverlayCache> overlays_;
};

namespace {

using wire::AdapterInit;
using wire::AdapterMode;

constexpr std::string_view kSoftwareVersion = "fedlora 0.1.0";
constexpr std::uint32_t kDescribeSeqLen = 128;  // Window length Hello's num_examples counts.
// Salts that separate the streams derived from one seed.
constexpr std::uint64_t kInitSalt = 0x1A17;
constexpr std::uint64_t kDropoutSalt = 0xD0;
constexpr std::uint64_t kOrderSalt = 0x0D;

class LocalWorker final : public Worker {
 public:
  LocalWorker(ClientConfig config, std::shared_ptr<const ModelAssets> assets,
              LocalWorkerOptions options, std::shared_ptr<const ClientDataset> data,
              std::optional<PrivateTrainer> private_trainer)
      : config_(std::move(config)),
        assets_(std::move(assets)),
        options_(options),
        data_(std::move(data)),
        private_trainer_(std::move(private_trainer)),
        local_store_(
            config_.state_dir.empty() ? StrCat("fedlora-client-", config_.name) : config_.state_dir,
            config_.name, assets_->model().Digest()) {
    const LlamaModel& model = assets_->model();
    hello_.client_name = config_.name;
    hello_.software_version = std::string(kSoftwareVersion);
    hello_.base_model_sha256 = model.Digest();
    hello_.capabilities.device = assets_->device();
    hello_.capabilities.memory_bytes = config_.capabilities.memory_bytes != 0
                                           ? config_.capabilities.memory_bytes
                                           : PhysicalMemoryBytes();
    hello_.capabilities.max_rank = config_.capabilities.max_rank;
    hello_.capabilities.num_examples = TrainWindows(
        static_cast<std::uint32_t>(std::min<std::int64_t>(kDescribeSeqLen, model.config().seq_len)));
    hello_.capabilities.relative_speed = config_.capabilities.relative_speed;
    hello_.capabilities.can_initialize =
        data_->InitSource(kDescribeSeqLen, 1) != nullptr && !InitWouldReadPrivateData();
    hello_.modules = model.AdaptableModules();
  }

  // May run on the session's thread while a task runs on its job thread: reads only immutable
  // members and the atomic base version.
  wire::Hello Describe() const override {
    wire::Hello hello = hello_;
    hello.base_version = base_version_.load();
    return hello;
  }

  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override try {
    // Announced before waiting for the compute lock, so the batcher's next group waits for us.
    TrainingBatcher::Ticket ticket;
    if (options_.batcher != nullptr && task.plan.mode != AdapterMode::kLoraSbInit &&
        !private_trainer_) {
      ticket = options_.batcher->Announce();
    }
    std::unique_lock<std::mutex> lock = LockCompute();
    FEDLORA_RETURN_IF_ERROR(UpdateBase(task.base, task.tensors));
    const TensorMap adapter_tensors = AdapterTensors(task.tensors, task.base);
    FEDLORA_ASSIGN_OR_RETURN(
        const ResolvedPlan plan,
        InContext(ResolvePlan(assets_->model(), task.lora, task.plan, TaskPurpose::kTrain)));
    FEDLORA_RETURN_IF_ERROR(CheckRank(plan));
    if (plan.plan.mode == AdapterMode::kLoraSbInit) {
      return InitLoraSb(task, plan, adapter_tensors, stop);
    }
    const std::uint64_t seed =
        MixSeed(MixSeed(task.train.seed, StableHash(config_.name)), task.round);
    ModuleTensors local_b;
    if (plan.plan.init == AdapterInit::kLocalB) local_b = LocalB(plan);
    // fresh: this client's own draw; fromTask without tensors (a federation that leaves the
    // first initialisation to clients): every client draws the same A from the task seed.
    const AdapterSources sources{
        .tensors = &adapter_tensors,
        .init_seed = plan.plan.init == AdapterInit::kFresh ? MixSeed(seed, kInitSalt)
                                                           : MixSeed(task.train.seed, kInitSalt),
        .local_b = &local_b,
        .sb_cache = &sb_cache_};
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter,
                             InContext(BuildTaskAdapter(assets_->model(), task.lora, plan, sources)));
    adapter->SetSeed(MixSeed(seed, kDropoutSalt));
    std::map<std::string, double, std::less<>> start_scores;
    if (plan.pruning()) {
      FEDLORA_RETURN_IF_ERROR(
          InContext(adapter->SetTailPenalty(plan.plan.pruning.gamma, plan.plan.pruning.lambda)));
      start_scores = adapter->TailScores();
    }
    const std::unique_ptr<SequenceSource> source = data_->TrainSource(task.train.seq_len);
    // Progress for the data owner (a rewriting line on a terminal, else a log line every 10 s);
    // not for the simulator's virtual clients, whose coordinator reports for everyone.
    ProgressFn progress = config_.log_progress
                              ? ProgressReporter::ForThisProcess(
                                    StrCat("client '", config_.name, "' round ", task.round))
                              : ProgressFn();
    if (TrainingProgressBoard* board = options_.progress_board; board != nullptr) {
      progress = [board, round = task.round, show = std::move(progress)](const StepProgress& p) {
        board->Update(round, p);
        if (show) show(p);
      };
    }
    TrainStats stats;
    wire::Metrics dp_metrics;
    if (private_trainer_) {
      FEDLORA_ASSIGN_OR_RETURN(
          stats, private_trainer_->Train(assets_->model(), *adapter, *source, task.train,
                                         task.round, stop, BaseWeights(), dp_metrics, progress));
    } else if (options_.batcher != nullptr) {
      // The group trains under the compute lock itself; TrainLoraBatched equals TrainLora.
      if (lock.owns_lock()) lock.unlock();
      FEDLORA_ASSIGN_OR_RETURN(
          stats, InContext(options_.batcher->Train(
                     std::move(ticket),
                     {.adapter = adapter.get(),
                      .source = source.get(),
                      .spec = task.train,
                      .seed = MixSeed(seed, kOrderSalt),
                      .base_weights = BaseWeights()},
                     stop)));
      if (lock.mutex() != nullptr) lock.lock();
    } else {
      FEDLORA_ASSIGN_OR_RETURN(stats,
                               TrainLora(assets_->model(), *adapter, *source, task.train,
                                         MixSeed(seed, kOrderSalt), stop, BaseWeights(), progress));
    }
    wire::Update update;
    update.round = task.round;
    update.num_samples = stats.samples;
    update.num_examples = TrainWindows(task.train.seq_len);
    update.base_version = base_version_.load();
    std::int64_t trainable = 0;
    for (const at::Tensor& p : adapter->Parameters()) trainable += p.numel();
    update.metrics = {{"train_loss", stats.loss},
                      {"steps", static_cast<double>(stats.steps)},
                      {"tokens", static_cast<double>(stats.tokens)},
                      {"seconds", stats.seconds},
                      {"trainable_params", static_cast<double>(trainable)}};
    update.metrics.insert(dp_metrics.begin(), dp_metrics.end());
    std::map<std::string, std::int64_t, std::less<>> pruned;
    if (plan.pruning()) {
      const auto end_scores = adapter->TailScores();
      pruned = PrunedRanks(plan, start_scores, end_scores);
      double start_sum = 0, end_sum = 0;
      for (const auto& [m, v] : start_scores) start_sum += v;
      for (const auto& [m, v] : end_scores) end_sum += v;
      update.metrics["tail_score_start"] = start_sum;
      update.metrics["tail_score_end"] = end_sum;
      update.metrics["pruned_modules"] = static_cast<double>(pruned.size());
    }
    FEDLORA_ASSIGN_OR_RETURN(update.tensors,
                             ExportUpload(*adapter, plan, task.train.upload_dtype, pruned));
    if (plan.plan.init == AdapterInit::kLocalB) KeepLocalB(plan, *adapter);
    update.metrics["state_bytes"] = static_cast<double>(StateBytes());
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
    FEDLORA_RETURN_IF_ERROR(UpdateBase(task.base, task.tensors));
    const TensorMap adapter_tensors = AdapterTensors(task.tensors, task.base);
    std::unique_ptr<LoraAdapter> adapter;
    if (task.plan.mode == AdapterMode::kLoraSbInit) {
      return InvalidArgument("client '", config_.name, "': cannot evaluate a LoRA-SB ",
                             "initialisation plan");
    }
    if (!adapter_tensors.empty()) {  // Without adapter tensors: the (corrected) base.
      FEDLORA_ASSIGN_OR_RETURN(
          const ResolvedPlan plan,
          InContext(ResolvePlan(assets_->model(), task.lora, task.plan, TaskPurpose::kEvaluate)));
      ModuleTensors local_b;
      if (plan.plan.init == AdapterInit::kLocalB) local_b = LocalB(plan);
      const AdapterSources sources{.tensors = &adapter_tensors,
                                   .init_seed = MixSeed(task.train.seed, kInitSalt),
                                   .local_b = &local_b,
                                   .sb_cache = &sb_cache_};
      FEDLORA_ASSIGN_OR_RETURN(
          adapter, InContext(BuildTaskAdapter(assets_->model(), task.lora, plan, sources)));
    }
    const std::unique_ptr<SequenceSource> source =
        data_->HeldoutSource(task.train.seq_len, config_.data.max_eval_windows);
    const EvalOptions options{.seq_len = task.train.seq_len,
                              .batch_size = task.train.batch_size,
                              .max_batches = task.max_batches,
                              .max_windows = config_.data.max_eval_windows,
                              .label_tokens = data_->label_tokens(),
                              .labels = data_->heldout_labels()};
    FEDLORA_ASSIGN_OR_RETURN(const EvalStats stats,
                             client::Evaluate(assets_->model(), adapter.get(), *source, options,
                                              stop, BaseWeights()));
    wire::EvalResult result;
    result.round = task.round;
    result.loss = stats.loss;
    result.num_tokens = stats.tokens;
    result.num_examples = stats.windows;
    result.base_version = base_version_.load();
    result.metrics = {{"perplexity", std::exp(stats.loss)}, {"seconds", stats.seconds}};
    if (stats.accuracy) result.metrics["accuracy"] = *stats.accuracy;
    // Per-class counts let the coordinator report the majority-class baseline next to accuracy.
    for (std::size_t c = 0; c < stats.class_counts.size(); ++c) {
      result.metrics[StrCat("class_", c, "_examples")] = static_cast<double>(stats.class_counts[c]);
    }
    if (data_->has_answers() && config_.data.max_eval_generations > 0) {
      FEDLORA_ASSIGN_OR_RETURN(const double exact, ExactMatch(adapter.get(), stop));
      result.metrics["exact_match"] = exact;
    }
    return result;
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("client '", config_.name, "': out of memory while evaluating round ",
                             task.round);
  } catch (const std::exception& e) {
    return Internal("client '", config_.name, "': evaluating round ", task.round, ": ", e.what());
  }

  // What this client keeps between tasks: its tokenized data, FedSA's private B and LoRA-SB's
  // frozen factors. The shared base model and overlays are not counted.
  std::uint64_t StateBytes() const {
    std::uint64_t bytes = data_->MemoryBytes();
    const auto add = [&bytes](const ModuleTensors& tensors) {
      for (const auto& [name, t] : tensors) {
        bytes += static_cast<std::uint64_t>(t.numel()) * t.element_size();
      }
    };
    if (local_b_) add(local_b_->b);
    for (const auto& [name, frozen] : sb_cache_) {
      bytes += static_cast<std::uint64_t>(frozen.b.numel() + frozen.a.numel()) * sizeof(float);
    }
    return bytes;
  }

  TensorMap CorrectedBaseForTesting() const {
    TensorMap out;
    if (base_ == nullptr) return out;
    const std::vector<wire::ModuleInfo>& modules = assets_->model().AdaptableModules();
    const std::span<const at::Tensor> weights = base_->weights();
    for (std::size_t i = 0; i < weights.size(); ++i) {
      if (!weights[i].defined()) continue;
      Result<Tensor> t = ToWire(weights[i]);
      FEDLORA_CHECK_MSG(t.ok(), t.status().ToString());
      out.emplace(StrCat(modules[i].name, ".weight"), std::move(t).value());
    }
    return out;
  }

 private:
  std::unique_lock<std::mutex> LockCompute() const {
    return options_.compute_lock != nullptr ? std::unique_lock<std::mutex>(*options_.compute_lock)
                                            : std::unique_lock<std::mutex>();
  }

  template <typename T>
  Result<T> InContext(Result<T> r) const {
    if (r.ok()) return r;
    return r.status().WithContext(StrCat("client '", config_.name, "'"));
  }
  Status InContext(const Status& s) const {
    return s.WithContext(StrCat("client '", config_.name, "'"));
  }

  std::uint64_t TrainWindows(std::uint32_t seq_len) const { return data_->TrainRows(seq_len); }

  // A DP-SGD client's data is private unless the owner names public data in data.init_path:
  // LoRA-SB's initialisation reads it without noise (ALGORITHMS.md, Fed-SB's DP caveat).
  bool InitWouldReadPrivateData() const {
    return private_trainer_.has_value() && config_.data.init_path.empty();
  }

  // GSM8K-style exact match: greedy generation after each of the first max_eval_generations
  // held-out prompts, until EOS or max_new_tokens, judged by AnswerMatches.
  Result<double> ExactMatch(ModuleAdapter* adapter, std::stop_token stop) const {
    const std::span<const Example> examples = data_->heldout_examples();
    const std::size_t n = std::min<std::size_t>(examples.size(), config_.data.max_eval_generations);
    if (n == 0) return 0.0;
    GenerateOptions options;
    options.max_new_tokens = config_.data.max_new_tokens;
    const TextTokenizer& tokenizer = assets_->tokenizer();
    if (tokenizer.eos_id() >= 0) options.stop_tokens.push_back(tokenizer.eos_id());
    if (const TokenId im_end = tokenizer.PieceToId("<|im_end|>"); im_end >= 0) {
      options.stop_tokens.push_back(im_end);
    }
    std::size_t correct = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (stop.stop_requested()) return Status(StatusCode::kCancelled, "exact match cancelled");
      const Example& e = examples[i];
      FEDLORA_ASSIGN_OR_RETURN(
          const std::vector<TokenId> out,
          Generate(assets_->model(), adapter,
                   std::span<const TokenId>(e.tokens).first(e.prompt_len), options, BaseWeights()));
      if (AnswerMatches(tokenizer.Decode(out), e.answer)) ++correct;
    }
    return static_cast<double>(correct) / static_cast<double>(n);
  }

  Status CheckRank(const ResolvedPlan& plan) const {
    const std::uint32_t max_rank = config_.capabilities.max_rank;
    if (max_rank != 0 && plan.max_rank > static_cast<std::int64_t>(max_rank)) {
      return InvalidArgument("client '", config_.name, "': LoRA rank ", plan.max_rank,
                             " exceeds this client's max_rank ", max_rank);
    }
    return OkStatus();
  }

  std::span<const at::Tensor> BaseWeights() const {
    return base_ != nullptr ? base_->weights() : std::span<const at::Tensor>();
  }

  // Applies a task's base update; on error (a version mismatch keeps its wire code in detail())
  // the base is unchanged. Once applied it stays applied even if the task then fails, as the
  // coordinator assumes (tasks are applied in order).
  Status UpdateBase(const wire::BaseUpdate& update, const TensorMap& tensors) {
    Result<std::shared_ptr<const BaseOverlay>> next =
        ApplyBaseUpdate(assets_->model(), base_, update, tensors, &assets_->overlays());
    if (!next.ok()) return InContext(next.status());
    base_ = std::move(next).value();
    base_version_.store(BaseVersionOf(base_.get()));
    return OkStatus();
  }

  // ---- FedSA-LoRA: the private B ----

  static FactorLayout LocalBLayout(const ResolvedPlan& plan) {
    FactorLayout layout;
    for (const PlannedModule& m : plan.modules) {
      layout[LoraTensorName(m.name, LoraFactor::kB)] = {m.d_out, m.rank};
    }
    return layout;
  }

  // The client's B for `plan` (zeros the first time), from memory or its state directory.
  ModuleTensors LocalB(const ResolvedPlan& plan) {
    const FactorLayout layout = LocalBLayout(plan);
    const std::string path = local_store_.PathFor(layout);
    if (!local_b_ || local_b_->path != path) {
      const TensorMap stored = local_store_.Load(layout);
      ModuleTensors b;
      for (const PlannedModule& m : plan.modules) {
        Result<at::Tensor> t = FromWireAsFloat(stored.at(LoraTensorName(m.name, LoraFactor::kB)));
        FEDLORA_CHECK_MSG(t.ok(), t.status().ToString());  // The store checked every tensor.
        b.emplace(m.name, std::move(t).value());
      }
      local_b_ = LocalBState{path, std::move(b)};
    }
    return local_b_->b;
  }

  // Keeps the trained B in memory and persists it; a failed write is logged (the in-memory copy
  // still serves this process) so one full disk does not fail every round.
  void KeepLocalB(const ResolvedPlan& plan, const LoraAdapter& adapter) {
    const FactorLayout layout = LocalBLayout(plan);
    ModuleTensors b;
    TensorMap wire;
    for (const PlannedModule& m : plan.modules) {
      at::Tensor t = adapter.Factor(m.name, LoraFactor::kB);
      Result<Tensor> w = ToWire(t, DType::kF32);
      FEDLORA_CHECK_MSG(w.ok(), w.status().ToString());
      wire.emplace(LoraTensorName(m.name, LoraFactor::kB), std::move(w).value());
      b.emplace(m.name, std::move(t));
    }
    local_b_ = LocalBState{local_store_.PathFor(layout), std::move(b)};
    if (const Status saved = local_store_.Save(layout, wire); !saved.ok()) {
      LogWarn("client '", config_.name, "': could not persist its private LoRA B: ",
              saved.ToString());
    } else if (config_.spill_state) {
      local_b_.reset();  // On disk only; LocalB reads it back for the next task.
    }
  }

  // ---- LoRA-SB initialisation (ALGORITHMS.md §5) ----

  Result<wire::Update> InitLoraSb(const wire::RoundTask& task, const ResolvedPlan& plan,
                                  const TensorMap& adapter_tensors, std::stop_token stop) {
    if (InitWouldReadPrivateData()) {
      return FailedPrecondition("client '", config_.name, "' trains with DP-SGD and does not ",
                                "compute a LoRA-SB initialisation from its training data without ",
                                "noise (hint: name public data in data.init_path)")
          .WithDetail(static_cast<std::uint32_t>(wire::ErrorCode::kPrivacyMismatch));
    }
    if (!adapter_tensors.empty()) {
      return InvalidArgument("client '", config_.name, "': unknown adapter tensor '",
                             adapter_tensors.begin()->first,
                             "' (a LoRA-SB initialisation task carries none)");
    }
    const std::unique_ptr<SequenceSource> source =
        data_->InitSource(task.train.seq_len, task.plan.init_samples);
    if (source == nullptr || source->size() == 0) {
      return FailedPrecondition("client '", config_.name, "' holds no initialisation data ",
                                "(hint: set data.init_path, or data.init_from_train to use its ",
                                "training split)");
    }
    const LlamaModel& model = assets_->model();
    if (task.train.seq_len == 0 || task.train.seq_len > model.config().seq_len) {
      return InvalidArgument("train.seq_len ", task.train.seq_len, " must be in [1, ",
                             model.config().seq_len, "]");
    }
    if (task.train.batch_size == 0) return InvalidArgument("train.batch_size must be >= 1");
    // The first init_samples rows, in order, in batches of train.batch_size: a pure function
    // of the data, so the estimate is reproducible anywhere.
    std::vector<std::size_t> indices;
    for (const PlannedModule& m : plan.modules) indices.push_back(m.index);

    FEDLORA_ASSIGN_OR_RETURN(const BaseGradients g,
                             AccumulateBaseGradients(model, indices, *source,
                                                     task.train.batch_size, stop, BaseWeights()));
    wire::Update update;
    update.round = task.round;
    update.num_samples = g.samples;
    update.num_examples = TrainWindows(task.train.seq_len);
    update.base_version = base_version_.load();
    update.metrics = {{"train_loss", g.loss},
                      {"steps", static_cast<double>(g.batches)},
                      {"tokens", static_cast<double>(g.tokens)},
                      {"init_samples", static_cast<double>(g.samples)},
                      {"seconds", g.seconds}};
    const DType dtype = task.train.upload_dtype;
    for (std::size_t i = 0; i < plan.modules.size(); ++i) {
      const PlannedModule& m = plan.modules[i];
      // ΔW0 = −η·sign(G): the first AdamW step of full fine-tuning; then its rank-r SVD.
      const at::Tensor delta = at::sign(g.grads[i].to(at::kDouble)) * (-task.plan.init_learning_rate);
      Result<lora::SbInit> init = lora::SbInitFromUpdate(delta, m.rank, plan.scale);
      if (!init.ok()) return InContext(init.status().WithContext(StrCat("module '", m.name, "'")));
      FEDLORA_ASSIGN_OR_RETURN(update.tensors[LoraTensorName(m.name, LoraFactor::kB)],
                               ToWire(init->B, dtype));
      FEDLORA_ASSIGN_OR_RETURN(update.tensors[LoraTensorName(m.name, LoraFactor::kA)],
                               ToWire(init->A, dtype));
      FEDLORA_ASSIGN_OR_RETURN(update.tensors[LoraTensorName(m.name, LoraFactor::kR)],
                               ToWire(init->R, dtype));
    }
    return update;
  }

  struct LocalBState {
    std::string path;
    ModuleTensors b;
  };

  const ClientConfig config_;
  const std::shared_ptr<const ModelAssets> assets_;
  const LocalWorkerOptions options_;
  const std::shared_ptr<const ClientDataset> data_;
  // With privacy.dp_sgd: every task trains with DP-SGD under the client's own budget.
  std::optional<PrivateTrainer> private_trainer_;
  const LocalFactorStore local_store_;
  wire::Hello hello_;                       // Without base_version (see Describe).

  // Job-thread state.
  std::shared_ptr<const BaseOverlay> base_;  // Null: the pristine base at version 0.
  std::atomic<std::uint64_t> base_version_{0};
  LoraSbCache sb_cache_;                     // LoRA-SB's frozen B and A, per module.
  std::optional<LocalBState> local_b_;       // FedSA-LoRA's B, as last trained or loaded.
};

}  // namespace

Result<std::shared_ptr<const ModelAssets>> LoadModelAssets(const ModelConfig& config,
                                                           const std::string& device) {
  if (config.path.empty()) return InvalidArgument("model.path is empty");
  FEDLORA_ASSIGN_OR_RETURN(const at::Device where, ResolveDevice(device));
  std::shared_ptr<const LlamaModel> model;
  if (config.format == "llama2c") {
    FEDLORA_ASSIGN_OR_RETURN(model, LlamaModel::LoadLlama2c(config.path));
  } else if (config.format == "hf") {
    FEDLORA_ASSIGN_OR_RETURN(model, LlamaModel::LoadHf(config.path));
  } else if (config.format == "auto") {
    FEDLORA_ASSIGN_OR_RETURN(model, LlamaModel::Load(config.path));
  } else {
    return InvalidArgument("model.format '", config.format,
                           "' is not supported (expected: auto, llama2c, hf)");
  }
  if (!where.is_cpu()) {
    FEDLORA_ASSIGN_OR_RETURN(model, model->To(where));
  }
  // The tokenizer: model.tokenizer, else the checkpoint directory's tokenizer.json (or
  // tokenizer.model); a llama2.c checkpoint has no default.
  std::string tokenizer_path = config.tokenizer;
  if (tokenizer_path.empty()) {
    if (config.format == "llama2c" || !std::filesystem::is_directory(config.path)) {
      return InvalidArgument("model.tokenizer is empty (a llama2.c checkpoint needs its "
                             "tokenizer .bin)");
    }
    tokenizer_path = config.path;
  }
  FEDLORA_ASSIGN_OR_RETURN(
      std::unique_ptr<TextTokenizer> tokenizer,
      LoadTokenizer(tokenizer_path, static_cast<std::int32_t>(model->config().vocab_size)));
  LogInfo("model ", config.path, " (", model->AdaptableModules().size() / kModulesPerLayer,
          " layers, vocab ", model->config().vocab_size, ") on ", DescribeDevice(where),
          "; tokenizer: ", tokenizer->Describe());
  return std::shared_ptr<const ModelAssets>(
      std::make_shared<ModelAssets>(std::move(model), std::move(tokenizer), where.str()));
}

std::string BaseModelDigest(const ModelAssets& assets) { return assets.model().Digest(); }

std::shared_ptr<TrainingBatcher> MakeTrainingBatcher(std::shared_ptr<const ModelAssets> assets,
                                                     std::mutex* compute_lock,
                                                     BatchingOptions options) {
  FEDLORA_CHECK(assets != nullptr);
  const LlamaModel* model = &assets->model();
  return std::make_shared<TrainingBatcher>(
      std::shared_ptr<const LlamaModel>(std::move(assets), model), compute_lock, options);
}

BatcherStats GetBatcherStats(const TrainingBatcher& batcher) { return batcher.stats(); }

std::uint64_t ActivationBytesPerRow(const ModelAssets& assets, std::uint32_t seq_len) {
  const LlamaConfig& c = assets.model().config();
  const std::uint64_t t = seq_len;
  const std::uint64_t head_dim = static_cast<std::uint64_t>(
      c.head_dim > 0 ? c.head_dim : c.dim / std::max<std::int64_t>(1, c.n_heads));
  const std::uint64_t q = static_cast<std::uint64_t>(c.n_heads) * head_dim;
  const std::uint64_t kv = static_cast<std::uint64_t>(c.n_kv_heads) * head_dim;
  const std::uint64_t dim = static_cast<std::uint64_t>(c.dim);
  const std::uint64_t hidden = static_cast<std::uint64_t>(c.hidden_dim);
  // Per layer and token: two norms and residuals (4 dim), q, k, v (with RoPE copies), attention
  // output and o_proj (2 q + 3 (q + 2 kv)), gate, up, SiLU and product (4 hidden), each LoRA's
  // x·Aᵀ (small, ignored); per layer and head: scores and probabilities [T, T].
  const std::uint64_t per_token_layer = 4 * dim + 2 * q + 3 * (q + 2 * kv) + 4 * hidden;
  const std::uint64_t per_layer = t * per_token_layer + 2 * static_cast<std::uint64_t>(c.n_heads) * t * t;
  // Plus the logits and their softmax.
  const std::uint64_t logits = 2 * t * static_cast<std::uint64_t>(c.vocab_size);
  return sizeof(float) * (static_cast<std::uint64_t>(c.n_layers) * per_layer + logits);
}

std::string ModelDevice(const ModelAssets& assets) { return assets.device(); }

std::vector<wire::ModuleInfo> AdaptableModules(const ModelAssets& assets) {
  return assets.model().AdaptableModules();
}

Result<std::shared_ptr<const ClientDataset>> LoadClientDataset(const ClientConfig& config,
                                                               const ModelAssets& assets,
                                                               CorpusCache* corpus) {
  Result<std::unique_ptr<ClientDataset>> data =
      ClientDataset::Load(config.data, assets.tokenizer(),
                          static_cast<std::size_t>(assets.model().config().seq_len), corpus);
  if (!data.ok()) return data.status().WithContext(StrCat("client '", config.name, "'"));
  if (config.log_progress) {
    LogInfo("client '", config.name, "': ", (*data)->summary());
  } else {
    LogDebug("client '", config.name, "': ", (*data)->summary());
  }
  return std::shared_ptr<const ClientDataset>(std::move(data).value());
}

std::uint64_t ClientDatasetBytes(const ClientDataset& dataset) { return dataset.MemoryBytes(); }

Result<std::unique_ptr<Worker>> MakeLocalWorker(const ClientConfig& config,
                                                std::shared_ptr<const ModelAssets> assets,
                                                LocalWorkerOptions options) {
  if (assets == nullptr) return InvalidArgument("MakeLocalWorker: no model assets");
  if (config.name.empty()) return InvalidArgument("client name is empty");
  // The worker computes where the shared model lives; its own device setting must agree.
  Result<at::Device> device = ResolveDevice(config.device);
  if (!device.ok()) return device.status().WithContext(StrCat("client '", config.name, "'"));
  if (device->str() != assets->device()) {
    return FailedPrecondition("client '", config.name, "': device '", config.device, "' is ",
                              device->str(), " but the shared model is on ", assets->device());
  }
  std::optional<PrivateTrainer> private_trainer;
  if (config.privacy.dp_sgd.enabled) {
    const std::string dir =
        config.state_dir.empty() ? StrCat("fedlora-client-", config.name) : config.state_dir;
    Result<PrivateTrainer> opened = PrivateTrainer::Open(config.privacy.dp_sgd, config.name,
                                                         StrCat(dir, "/dp_sgd_budget.json"));
    if (!opened.ok()) return opened.status().WithContext(StrCat("client '", config.name, "'"));
    private_trainer.emplace(std::move(opened).value());
  }
  std::shared_ptr<const ClientDataset> data = options.dataset;
  if (data == nullptr) {
    Result<std::shared_ptr<const ClientDataset>> loaded =
        LoadClientDataset(config, *assets, options.corpus);
    if (!loaded.ok()) return loaded.status();
    data = std::move(loaded).value();
  }
  return std::unique_ptr<Worker>(std::make_unique<LocalWorker>(
      config, std::move(assets), options, std::move(data), std::move(private_trainer)));
}

void ConfigureTorchThreads(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(threads));
}

std::size_t LiveBaseOverlaysForTesting(const ModelAssets& assets) {
  return assets.overlays().LiveCount();
}

std::uint64_t LocalWorkerStateBytes(const Worker& worker) {
  const auto* local = dynamic_cast<const LocalWorker*>(&worker);
  return local != nullptr ? local->StateBytes() : 0;
}

TensorMap CorrectedBaseWeightsForTesting(const Worker& worker) {
  const auto* local = dynamic_cast<const LocalWorker*>(&worker);
  return local != nullptr ? local->CorrectedBaseForTesting() : TensorMap();
}

}  // namespace fedlora::client
