// strategy.h — the aggregation strategy interface: what each client gets, how uploads combine.
//
// In the spirit of Flower's configure_fit / aggregate_fit. A strategy knows tensors and clients;
// it knows nothing about sockets, sessions, deadlines or files (the coordinator owns those and
// persists GlobalState for it). One file pair per strategy in this folder; MakeStrategy
// (make_strategy.h) is the whole catalogue.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"

namespace fedlora::server {

// The base model every client must run, as learned from the clients' Hellos.
struct ModelLayout {
  std::string base_model_sha256;
  std::vector<wire::ModuleInfo> modules;  // Every LoRA-adaptable module, in the model's order.
  friend bool operator==(const ModelLayout&, const ModelLayout&) = default;
};

// Everything the coordinator persists for the strategy between rounds. A value: checkpoints
// store it and restarts restore it.
struct GlobalState {
  std::uint64_t round = 0;  // The last round aggregated into this state; 0 = initial state.
  TensorMap adapter;        // Global LoRA factors, "<module>.lora_{A,B}.weight".
  TensorMap extra;          // Strategy-specific tensors (e.g. a correction log); often empty.
  friend bool operator==(const GlobalState&, const GlobalState&) = default;
};

struct ClientInfo {
  std::string id;
  wire::Capabilities capabilities;
};

// What one selected client receives this round.
struct ClientTask {
  std::string client_id;
  wire::LoraSpec lora;
  wire::TrainSpec train;
  TensorMap tensors;  // Sent in the RoundTask.
  // The tensors the client must upload: exact names, dtypes and shapes. The coordinator rejects
  // anything else before the strategy sees it.
  std::map<std::string, TensorSpec, std::less<>> expected_upload;
};

// One accepted upload, already validated against the client's expected_upload.
struct ClientUpdate {
  std::string client_id;
  std::uint64_t num_samples = 0;
  std::uint64_t num_examples = 0;
  wire::Metrics metrics;
  TensorMap tensors;
};

struct AggregateReport {
  std::map<std::string, double, std::less<>> weights;  // Client id -> weight used (sums to 1).
  wire::Metrics metrics;                               // Strategy-specific numbers for metrics.
};

// Thread-compatible: the coordinator calls it from its one loop thread.
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string_view name() const = 0;

  // The state before round 1 for a model with `layout`.
  // kInvalidArgument when the configured targets do not exist in the layout.
  virtual Result<GlobalState> Initialize(const ModelLayout& layout) = 0;

  // The task for each selected client, in the order given.
  virtual Result<std::vector<ClientTask>> Configure(const GlobalState& state,
                                                    std::span<const ClientInfo> selected) = 0;

  // Folds the accepted uploads of one round into `state` (round number excluded: the
  // coordinator sets it). `updates` arrive sorted by client id, never empty; the result must not
  // depend on their arrival order. On error `state` is unchanged.
  virtual Result<AggregateReport> Aggregate(GlobalState& state,
                                            std::span<const ClientUpdate> updates) = 0;

  // The tensors a client evaluates the global model with (EvalTask), and the specs for it.
  virtual TensorMap EvalTensors(const GlobalState& state, const ClientInfo& client) const {
    return state.adapter;
  }
  virtual wire::LoraSpec EvalLora(const ClientInfo& client) const = 0;
};

}  // namespace fedlora::server
