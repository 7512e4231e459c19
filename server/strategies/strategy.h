// strategy.h — the aggregation strategy interface: what each client gets, how uploads combine.
//
// In the spirit of Flower's configure_fit / aggregate_fit. A strategy knows tensors, clients and
// their adapter plans; it knows nothing about sockets, sessions, deadlines or files (the
// coordinator owns those and persists GlobalState for it). One file pair per strategy in this
// folder; MakeStrategy (make_strategy.h) is the whole catalogue. Strategies that change the
// frozen base weights (FedEx-LoRA, FLoRA) append to GlobalState::corrections; the coordinator
// ships each client the corrections it lacks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/secagg/secure_input.h"
#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"
#include "server/correction_log.h"

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
  std::uint64_t round = 0;     // The last round aggregated into this state; 0 = initial state.
  TensorMap adapter;           // Global LoRA factors, "<module>.lora_{A,B}.weight" (or lora_R).
  TensorMap extra;             // Strategy tensors (frozen Fed-SB factors, optimiser moments).
  CorrectionLog corrections;   // Base-weight corrections (FedEx-LoRA, FLoRA).
  std::string strategy_json;   // Small strategy state as JSON (client ranks, step counts).
  friend bool operator==(const GlobalState&, const GlobalState&) = default;
};

struct ClientInfo {
  std::string id;
  wire::Capabilities capabilities;
  // The client's LoRA depth and per-module ranks from the rank policy (rank_policy.h); empty
  // modules = every target module at the configured rank.
  wire::AdapterPlan plan;
  // Strategy-defined keys of data this client already holds from earlier tasks in its current
  // session (e.g. Fed-SB's frozen B and A), so it is sent once per session.
  std::set<std::string, std::less<>> cached;
};

// What one uploaded tensor must look like. `shrinkable_dim` >= 0 allows that dimension to be
// smaller (but >= 1) than in `spec`: a client that pruned its rank (HetLoRA).
struct ExpectedTensor {
  TensorSpec spec;
  int shrinkable_dim = -1;
  friend bool operator==(const ExpectedTensor&, const ExpectedTensor&) = default;
};
using UploadSpec = std::map<std::string, ExpectedTensor, std::less<>>;

// What one selected client receives this round.
struct ClientTask {
  std::string client_id;
  wire::LoraSpec lora;
  wire::TrainSpec train;
  wire::AdapterPlan plan;
  TensorMap tensors;  // Sent in the task (the coordinator adds correction tensors).
  // The tensors the client must upload. The coordinator rejects anything else before the
  // strategy sees it.
  UploadSpec expected_upload;
  // Keys this task delivers into the client's ClientInfo::cached once the client has answered.
  std::vector<std::string> caches;
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

// What a client evaluates the global model with.
struct EvalSpec {
  wire::LoraSpec lora;
  wire::AdapterPlan plan;
  TensorMap tensors;
  std::vector<std::string> caches;  // As ClientTask::caches.
};

// Gives the accepted uploads of a round again, one at a time, in client-id order: the coordinator
// reads them back from its pending files, so a strategy that needs every upload at once (a robust
// rule, a weight-share cap, FLoRA's stack) never needs the coordinator to keep them in memory.
class UploadSource {
 public:
  virtual ~UploadSource() = default;
  virtual std::size_t size() const = 0;
  // Calls `fn` with each upload and the task it answered; stops at the first error.
  virtual Status ForEach(
      const std::function<Status(const ClientUpdate&, const ClientTask&)>& fn) const = 0;
  // Elements [begin, begin + count) of tensor `name` of every upload (row-major, as doubles), in
  // client-id order, into out[k]: for rules that decide coordinate by coordinate, so a round
  // holds N x count values, never N uploads. kInvalidArgument naming the client when an upload
  // lacks the tensor or the range exceeds it.
  virtual Status ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                            std::vector<std::vector<double>>& out) const = 0;
};

// Elements [begin, begin + count) of `t` as doubles; kInvalidArgument naming `what` when the
// range exceeds it.
Result<std::vector<double>> SliceAsDoubles(DType dtype, std::span<const std::byte> data,
                                           std::int64_t begin, std::int64_t count,
                                           std::string_view what);

// One round's aggregation in progress: Begin, Fold each accepted upload as it arrives, Finish.
// The result of Finish must not depend on the order of the folds (a coordinator restarted in the
// middle of a round folds the persisted uploads again, in another order).
class RoundAccumulator {
 public:
  virtual ~RoundAccumulator() = default;
  // Folds one accepted upload, already validated against `task` (ValidateUpload and
  // Strategy::ValidateUpdate). On error nothing of it was folded and the round goes on without
  // it; the error names the tensor at fault.
  virtual Status Fold(const ClientUpdate& update, const ClientTask& task) = 0;
  // Writes the aggregate of the folded uploads into `state` (state.round is the coordinator's).
  // `uploads` holds exactly the folded uploads, for strategies that must see them again. Called
  // once, after at least one successful Fold. On error `state` is unchanged.
  virtual Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) = 0;
};

// Strategies whose initial state needs one client's data (Fed-SB): the coordinator sends
// ConfigureInit's task to one eligible client before round 0 and passes its upload to AcceptInit.
class ClientInitialization {
 public:
  virtual ~ClientInitialization() = default;
  virtual bool NeedsClientInit(const GlobalState& state) const = 0;
  virtual Result<ClientTask> ConfigureInit(const GlobalState& state, const ClientInfo& client) = 0;
  virtual Status AcceptInit(GlobalState& state, const ClientUpdate& update) = 0;
};

// How a linear strategy's uploads are summed under secure aggregation (issue 13): the count
// each client's weight is, whether clients sum the change from their task's tensors instead of
// the tensors (FSLoRA's deltas), and the range the weighted values are clipped to when the
// configuration does not set one. The summed slots are the tensors the tasks ask for, at the
// global adapter's shape (the coordinator derives them).
struct SecureSpec {
  wire::SecAggWeighting weighting = wire::SecAggWeighting::kExamples;
  bool delta = false;
  double clip = 1.0;
};

// Thread-compatible: the coordinator calls it from its one loop thread.
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string_view name() const = 0;

  // Binds the strategy to the federation's model (the first client's Hello, or a restored
  // checkpoint) before any other method, and returns the state to continue from: `restored`
  // when given (a checkpoint), else the state before round 1. kInvalidArgument when the
  // configured targets do not exist in the layout.
  virtual Result<GlobalState> Initialize(const ModelLayout& layout,
                                         std::optional<GlobalState> restored) = 0;

  // Non-null for strategies whose initial state needs a client (see ClientInitialization).
  virtual ClientInitialization* client_initialization() { return nullptr; }

  // True when the round needs of its uploads only Σ_k w_k·x_k (and Σ_k w_k), with x_k the
  // uploaded tensors (placed by the client's task, e.g. FSLoRA's sketch, HetLoRA's padding) and
  // w_k known from the upload's counts alone: then a masked sum (secure aggregation) is enough.
  virtual bool linear() const { return false; }

  // Set exactly for the linear strategies: how they are summed under secure aggregation.
  virtual std::optional<SecureSpec> secure_spec() const { return std::nullopt; }
  // Writes the aggregate of a round whose uploads the coordinator only knows as their secure
  // sum (per slot Σ w·x and Σ w of the survivors) into `state`. Only for linear strategies.
  virtual Result<AggregateReport> FinishSecure(GlobalState& state, std::uint64_t round,
                                               const secagg::SecureSum& sum) {
    return Unimplemented(name(), " cannot aggregate a secure sum");
  }

  // The task for each selected client of `round`, in the order given. Must be a pure function
  // of its arguments: after a restart the coordinator calls it again to re-derive the tasks of
  // uploads it had already accepted.
  virtual Result<std::vector<ClientTask>> Configure(const GlobalState& state, std::uint64_t round,
                                                    std::span<const ClientInfo> selected) = 0;

  // Checks beyond expected_upload (e.g. that A and B of a module were pruned to the same rank).
  // kInvalidArgument with a wire::ErrorCode detail, like the coordinator's own checks.
  virtual Status ValidateUpdate(const ClientTask& task, const ClientUpdate& update) const {
    return OkStatus();
  }

  // Starts aggregating `round` on top of `state`, which stays alive and unchanged until Finish.
  virtual Result<std::unique_ptr<RoundAccumulator>> Begin(const GlobalState& state,
                                                          std::uint64_t round) = 0;

  // What a client evaluates the current global model with. Default: the global adapter.
  virtual EvalSpec Evaluation(const GlobalState& state, const ClientInfo& client) const = 0;
};

// Aggregates `updates` (each answering tasks[i]; tasks may be empty for strategies that do not
// read them) in one go: Begin, Fold in the given order, Finish. For tests, the offline aggregator
// and benchmarks; the coordinator folds as uploads arrive.
Result<AggregateReport> AggregateAll(Strategy& strategy, GlobalState& state, std::uint64_t round,
                                     std::span<const ClientUpdate> updates,
                                     std::span<const ClientTask> tasks);

// An accumulator for strategies that need every upload at once: Fold only records who was folded;
// Finish reads the uploads back from the source (client-id order) and hands them all to
// `combine`. Memory at Finish is N uploads.
using CombineAll = std::function<Result<AggregateReport>(
    GlobalState& state, std::span<const ClientUpdate> updates, std::span<const ClientTask> tasks)>;
std::unique_ptr<RoundAccumulator> MakeGatheringAccumulator(CombineAll combine);

// An UploadSource over uploads held in memory, visited in client-id order.
class MemoryUploads final : public UploadSource {
 public:
  MemoryUploads(std::span<const ClientUpdate> updates, std::span<const ClientTask> tasks);
  std::size_t size() const override { return order_.size(); }
  Status ForEach(
      const std::function<Status(const ClientUpdate&, const ClientTask&)>& fn) const override;
  Status ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                    std::vector<std::vector<double>>& out) const override;

 private:
  std::span<const ClientUpdate> updates_;
  std::span<const ClientTask> tasks_;
  std::vector<std::size_t> order_;
};

}  // namespace fedlora::server
