// local_worker.h — the real client: fine-tunes LoRA adapters on a frozen Llama with LibTorch.
//
// Torch-free header (the model is opaque here) so the session, the simulator and the executables
// compile without LibTorch; local_worker.cc is the door.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "client/config.h"
#include "client/worker.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// The frozen base model and its tokenizer. Immutable after loading, so one instance may be
// shared by any number of workers on any threads (the simulator shares one across all clients).
// It also holds a thread-safe cache through which workers at the same base-correction version
// share one copy of the corrected weights (client/model/base_overlay.h).
class ModelAssets;

// Loads the checkpoint and tokenizer named by `config` onto `device` ("auto", "cpu", "cuda",
// "cuda:N"; see client/train/device.h): model.format auto (a directory with config.json is a
// Hugging Face checkpoint, else llama2.c), llama2c or hf; model.tokenizer, or for HF checkpoints
// the directory's tokenizer.json / tokenizer.model. Errors name the file at fault.
Result<std::shared_ptr<const ModelAssets>> LoadModelAssets(const ModelConfig& config,
                                                           const std::string& device = "cpu");

// Hex SHA-256 over the base weights in canonical form (Hugging Face names in sorted order, each
// tensor's name, dtype, shape and little-endian f32 bytes). Equal for the legacy and version-1
// files of the same weights.
std::string BaseModelDigest(const ModelAssets& assets);

// Where the model lives: "cpu", "cuda:0", ...
std::string ModelDevice(const ModelAssets& assets);

// Every linear module of the model that LoRA can adapt, with Hugging Face names.
std::vector<wire::ModuleInfo> AdaptableModules(const ModelAssets& assets);

// ---- Batched training of many workers (the simulator) -----------------------------------------

// How a TrainingBatcher groups the training tasks of the workers that share it.
struct BatchingOptions {
  // K: the most clients trained together in one group (>= 1; 1 = one at a time).
  std::uint32_t max_clients = 16;
  // Rows per forward/backward pass (BatchedTrainOptions::max_rows_per_pass; 0 = no bound).
  std::uint32_t max_rows_per_pass = 0;
  // A group starts once no worker is still preparing its task and no task has arrived for this
  // long, or when it is full, or when its oldest task has waited max_gather.
  std::chrono::milliseconds gather{20};
  std::chrono::milliseconds max_gather{2000};
  // Groups trained at the same time, each on a thread of its own (>= 1). On a CPU, LibTorch's
  // intra-op threads speed up a small model's step little (stories260K: one thread did as well
  // as two here), so one single-threaded lane per core trains `lanes` times as many clients.
  std::uint32_t lanes = 1;
};

// What a TrainingBatcher has done so far.
struct BatcherStats {
  std::uint64_t groups = 0;          // Batched calls run.
  std::uint64_t clients = 0;         // Client tasks trained in them.
  std::uint32_t largest_group = 0;
  double seconds = 0;                // Wall time spent training groups.
};

// Trains the tasks of the LocalWorkers it is given to (LocalWorkerOptions::batcher) in groups
// through one forward and backward of the shared base (client/train/training_batcher.h).
class TrainingBatcher;

// A batcher over `assets`' model. Workers sharing it must be built on the same assets; training
// groups hold `compute_lock` (may be null; must outlive the batcher).
std::shared_ptr<TrainingBatcher> MakeTrainingBatcher(std::shared_ptr<const ModelAssets> assets,
                                                     std::mutex* compute_lock,
                                                     BatchingOptions options);
BatcherStats GetBatcherStats(const TrainingBatcher& batcher);

// Bytes of activations LibTorch keeps per training row of `seq_len` tokens for the backward pass
// of `assets`' model with LoRA on every adaptable module: an estimate (float32; the [T, T]
// attention scores and probabilities, and per layer the residual stream, norms, projections and
// MLP activations), used to size batched groups to a memory budget.
std::uint64_t ActivationBytesPerRow(const ModelAssets& assets, std::uint32_t seq_len);

// One client's loaded data (client/train/client_dataset.h): immutable, shareable between
// workers built one after another for the same client (the simulator's checked-in clients).
class ClientDataset;
// Text corpora read and partitioned once for many clients (client/data/corpus_cache.h).
class CorpusCache;
// The training step in progress, for an ops endpoint (client/train/progress.h).
class TrainingProgressBoard;

// Loads, partitions and tokenizes `config.data` for the client `config.name` (as MakeLocalWorker
// does); with `corpus`, through that cache. Errors name the data file and the client.
Result<std::shared_ptr<const ClientDataset>> LoadClientDataset(const ClientConfig& config,
                                                               const ModelAssets& assets,
                                                               CorpusCache* corpus = nullptr);
// Bytes of tokens and labels `dataset` holds.
std::uint64_t ClientDatasetBytes(const ClientDataset& dataset);

struct LocalWorkerOptions {
  // When set, training and evaluation hold this mutex, so workers sharing a machine take turns
  // on its cores instead of oversubscribing them. Must outlive the worker.
  std::mutex* compute_lock = nullptr;
  // When set, training tasks (all modes but the LoRA-SB initialisation) are trained in groups
  // with other workers of the same batcher; the batcher must be built on the same assets and
  // compute lock.
  std::shared_ptr<TrainingBatcher> batcher;
  // The client's data, loaded earlier with LoadClientDataset for this same config; null: loaded
  // by MakeLocalWorker (through `corpus` when set, which must outlive the call).
  std::shared_ptr<const ClientDataset> dataset;
  CorpusCache* corpus = nullptr;
  // When set, every training step is posted here (the client's ops endpoint shows it); must
  // outlive the worker.
  TrainingProgressBoard* progress_board = nullptr;
};

// Builds a worker for `config` (its name, data and capabilities) on top of shared `assets`.
// Loads, partitions and tokenizes the client's data unless `options.dataset` holds it; errors
// name the data file at fault. Private state (FedSA-LoRA's B, the DP-SGD budget) is read from
// config.state_dir, so a worker built again for the same client goes on where the last left.
Result<std::unique_ptr<Worker>> MakeLocalWorker(const ClientConfig& config,
                                                std::shared_ptr<const ModelAssets> assets,
                                                LocalWorkerOptions options = {});

// Sets LibTorch's intra-op thread count (0 = all cores). LibTorch defaults to 1 on some machines.
void ConfigureTorchThreads(unsigned threads);

// What a LocalWorker keeps between tasks (its tokenized data, FedSA's private B, LoRA-SB's
// frozen factors), in bytes; the shared model is not counted. 0 for other Workers. Call it only
// while the worker runs no task.
std::uint64_t LocalWorkerStateBytes(const Worker& worker);

// ---- For tests -------------------------------------------------------------------------------

// Corrected base weights (base_overlay.h) alive among the workers sharing `assets`: workers at
// the same base version share one.
std::size_t LiveBaseOverlaysForTesting(const ModelAssets& assets);

// The corrected base weights a LocalWorker currently trains and evaluates on, by HF weight name
// ("<module>.weight"), as f32 copies; only corrected modules are listed. Empty for other Workers.
TensorMap CorrectedBaseWeightsForTesting(const Worker& worker);

}  // namespace fedlora::client
