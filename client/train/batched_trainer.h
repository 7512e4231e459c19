// batched_trainer.h — several clients' LoRA training steps through one forward and one backward
// of the shared frozen base (the S-LoRA / Punica "batched LoRA" idea, for the simulator).
//
// The simulator holds the base model once and each virtual client only its adapter, optimiser
// state and data. TrainLoraBatched trains a group of clients together: at every step each active
// client's micro-batch is built exactly as TrainLora builds it (same per-epoch shuffle from the
// client's seed, same rows), the rows are concatenated into one batch (right-padded to the longest
// row with kIgnoreIndex targets; causal attention keeps padding away from real positions), and
// LlamaModel::Forward runs once. Each adaptable module's base product x·Wᵀ is computed once for
// all rows. When a pass's clients bring, for a module, plain factors of one rank and scale
// (LoraAdapter::Plain: no latent R, no active dropout; any row counts and lengths), their K
// LoRA products are two batched matmuls over the stacked factors (the Punica / S-LoRA form);
// otherwise each client's LoRA is applied to its own row slice (LoraAdapter::Adapt on the slice,
// so any adapter works: heterogeneous ranks, sketches, frozen factors, LoRA-SB, dropout). The
// objective is Σ_k (mean token loss of client k's rows + client k's Penalty()), so one backward
// gives each adapter exactly its own gradient; each client then clips its gradients and takes its
// own AdamW step (fresh state per call, like TrainLora).
//
// Equivalence (tests/client_ml/batched_trainer_test.cc): with the same adapters, data, specs and
// seeds, the factors after TrainLoraBatched equal those after one TrainLora call per client up
// to float rounding: bit for bit in our CPU tests when every client's rows have one length (the
// kernels round a row slice of a larger batch as they round the slice alone; no guarantee of
// LibTorch's), relative differences ~1e-6 when padding lengthens some rows. Dropout included:
// each adapter draws its masks from its own generator, on exactly the shapes TrainLora would.
//
// While a call runs, each adapter's trainable tensors (LoraAdapter::Parameters(), aliases) are
// re-pointed at views of one flat buffer per client, so that zeroing, clipping and the AdamW step
// are a handful of tensor operations per client; on return (any path) every tensor again owns
// its storage and has no gradient.
//
// Knows nothing about rounds, strategies or the wire protocol. Thread-safety: like TrainLora,
// calls with disjoint adapters may run concurrently on one shared model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <stop_token>
#include <vector>

#include "client/lora/lora_adapter.h"
#include "client/model/llama.h"
#include "client/train/sequences.h"
#include "client/train/trainer.h"
#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// One client of a batched group. Borrowed pointers and views must outlive the call.
struct BatchedClient {
  LoraAdapter* adapter = nullptr;          // Trained in place; distinct for every client.
  const SequenceSource* source = nullptr;  // As for TrainLora's SequenceSource overload.
  wire::TrainSpec spec;                    // Validated as TrainLora validates it.
  std::uint64_t seed = 0;                  // Batch order, as TrainLora's seed.
  // Replacement base weights (LlamaModel::Forward). One forward serves every client, so all
  // clients of a call must bring the same overlay: none, or spans of the same length holding,
  // entry by entry, the same tensor (or undefined). Clients with different overlays are refused:
  // group them by overlay and make one call per group.
  std::span<const at::Tensor> base_weights;
};

struct BatchedTrainOptions {
  // The most rows one forward/backward pass takes. A step whose active clients bring more rows is
  // split between clients (never within one client's rows) into consecutive passes of at most
  // this many rows; a client with more rows than this gets a pass of its own. 0 = one pass for
  // every client (what a GPU wants). On a CPU a bound keeps each pass's activations — above all
  // the [rows x heads, T, T] attention scores — in the caches, and it bounds memory: activations
  // grow with the rows of a pass, not with the number of clients. Results do not depend on it
  // beyond rounding (padding only reaches the longest row of a pass).
  std::uint32_t max_rows_per_pass = 0;
};

// Trains every client's adapter in place, as TrainLora(model, *c.adapter, *c.source, c.spec,
// c.seed, stop, c.base_weights) would, and returns each client's TrainStats (same meaning as
// TrainLora's) in `clients` order.
//
// Specs may differ between clients in every field (learning rate, batch size, seq_len, step
// count, epochs...): a client whose steps are done drops out of later steps, and rows of
// different lengths are padded. A client whose batch at some step has no unmasked target skips
// that step (no forward, no optimiser step), as TrainLora does. Each client's `seconds` is the
// wall time of the whole batched loop (the clients share it).
//
// kInvalidArgument: no clients; a null adapter or source; the same adapter twice; a spec value
// out of range or an adapter with no trainable tensor (names the client index and field);
// clients with different base-weight overlays; a client's loss or penalty became non-finite
// (names the client and step; every adapter keeps the steps it completed).
// kFailedPrecondition: a client's source is empty (names the client). Nothing is trained when
// the call is refused up front.
// kCancelled: `stop` was requested; checked before every step, adapters keep the steps done.
// kInternal: LibTorch threw (the message says what).
// On return every adapter is in evaluation mode.
Result<std::vector<TrainStats>> TrainLoraBatched(const LlamaModel& model,
                                                 std::span<const BatchedClient> clients,
                                                 const BatchedTrainOptions& options = {},
                                                 std::stop_token stop = {});

}  // namespace fedlora::client
