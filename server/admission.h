// admission.h — what the coordinator accepts from a peer, decided without sockets or state: the
// checks of a Hello (its name, the model it describes, what serving it would cost), of an Update
// against the task it answers, and of an EvalResult's values.
//
// Pure functions of their arguments. A refusal is kInvalidArgument with the wire::ErrorCode the
// peer is answered with as detail() (wire::DecodeErrorCode reads it back), and a message naming
// the field, module, tensor or metric. What needs more than the message decides elsewhere: the
// CURVE key (coordinator_security.cc), a name held by a live session (coordinator.cc), whether a
// round is open for this client and its ticket (round_state.h).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/wire/messages.h"
#include "server/config.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// Limits on what a Hello may describe: modules listed, each dimension; metrics in an Update.
inline constexpr std::size_t kMaxHelloModules = 65536;
inline constexpr std::int64_t kMaxModuleDim = std::int64_t{1} << 24;
inline constexpr std::size_t kMaxUpdateMetrics = 64;

// A refusal of a peer's message: kInvalidArgument with `code` as detail().
template <typename... Args>
Status Refusal(wire::ErrorCode code, const Args&... args) {
  return Status(StatusCode::kInvalidArgument, StrCat(args...), static_cast<std::uint32_t>(code));
}

// `name` (its first 128 bytes) with anything outside printable ASCII escaped as \xNN, for log
// lines and error messages.
std::string PrintableName(std::string_view name);

// INVALID_FIELD unless the client name is 1-64 characters of [A-Za-z0-9._-], not starting
// with '.'.
Status CheckHelloName(const wire::Hello& hello);

// The model a Hello describes, against the federation's. The digest must be the configured
// base_model_sha256, else that of `layout` (the federation's, once the first client pinned it),
// else any (BASE_MODEL_MISMATCH), and 64 lowercase hex digits (INVALID_FIELD). The modules: 1 to
// kMaxHelloModules, names of [A-Za-z0-9._-], dimensions 1 to kMaxModuleDim, no duplicates
// (INVALID_FIELD). The configured LoRA targets must exist among them (BASE_MODEL_MISMATCH); their
// adapter may be of any size (it travels in chunks). Once pinned, the module layout must equal
// `layout`'s (BASE_MODEL_MISMATCH).
Status CheckHelloModel(const wire::Hello& hello, const CoordinatorConfig& config,
                       const std::optional<ModelLayout>& layout);

// The LoRA depth and ranks the rank policy gives this client (sent in its Welcome);
// INVALID_FIELD when its capabilities admit none.
Result<wire::AdapterPlan> PlanForHello(const wire::Hello& hello, const CoordinatorConfig& config);

// The most examples a client holding `examples` can process in one round of `train`: steps x
// batch, or its epochs over the examples in whole batches.
std::uint64_t SamplesLimit(const wire::TrainSpec& train, std::uint64_t examples);

// OK when `update` has exactly the tensors `task` asked for (names, dtypes, shapes), all finite,
// and sane counts: examples processed (numSamples) no more than the task could process, given at
// most `max_examples` held; at most kMaxUpdateMetrics metrics, with boring names and finite
// values. Otherwise TENSOR_SHAPE_MISMATCH (naming the missing or unexpected tensor),
// TENSOR_DTYPE_MISMATCH, NON_FINITE_TENSOR or INVALID_FIELD.
Status ValidateUpload(const wire::Update& update, const ClientTask& task,
                      std::uint64_t max_examples);
// The head of a chunked upload, before a byte of it is stored: `update`'s counts and metrics and
// the tensors it announces (names, dtypes, shapes), as ValidateUpload checks them; the values
// (finite) are checked by ValidateUpload once every chunk arrived.
Status ValidateUploadHead(const wire::Update& update, std::span<const wire::TensorRef> tensors,
                          const ClientTask& task, std::uint64_t max_examples);

// INVALID_FIELD unless the loss is finite and >= 0 over num_tokens > 0 tokens, every
// "class_<c>_examples" metric lies in [0, num_examples] and "accuracy" and "exact_match" (when
// present) in [0, 1]: metrics.jsonl sums and averages them (round_report.h).
Status CheckEvalResult(const wire::EvalResult& result);

}  // namespace fedlora::server
