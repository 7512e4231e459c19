// local_worker.h — the real client: fine-tunes LoRA adapters on a frozen Llama with LibTorch.
//
// Torch-free header (the model is opaque here) so the session, the simulator and the executables
// compile without LibTorch; local_worker.cc is the door.
#pragma once

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

// Every linear module of the model that LoRA can adapt, with Hugging Face names.
std::vector<wire::ModuleInfo> AdaptableModules(const ModelAssets& assets);

struct LocalWorkerOptions {
  // When set, training and evaluation hold this mutex, so workers sharing a machine take turns
  // on its cores instead of oversubscribing them. Must outlive the worker.
  std::mutex* compute_lock = nullptr;
};

// Builds a worker for `config` (its name, data and capabilities) on top of shared `assets`.
// Loads, partitions and tokenizes the client's data; errors name the data file at fault.
Result<std::unique_ptr<Worker>> MakeLocalWorker(const ClientConfig& config,
                                                std::shared_ptr<const ModelAssets> assets,
                                                LocalWorkerOptions options = {});

// Sets LibTorch's intra-op thread count (0 = all cores). LibTorch defaults to 1 on some machines.
void ConfigureTorchThreads(unsigned threads);

// ---- For tests -------------------------------------------------------------------------------

// Corrected base weights (base_overlay.h) alive among the workers sharing `assets`: workers at
// the same base version share one.
std::size_t LiveBaseOverlaysForTesting(const ModelAssets& assets);

// The corrected base weights a LocalWorker currently trains and evaluates on, by HF weight name
// ("<module>.weight"), as f32 copies; only corrected modules are listed. Empty for other Workers.
TensorMap CorrectedBaseWeightsForTesting(const Worker& worker);

}  // namespace fedlora::client
