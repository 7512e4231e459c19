// admission.cc — the pure checks of what peers send (admission.h).
#include "server/admission.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/lora/adapter_layout.h"
#include "server/rank_policy.h"

namespace fedlora::server {
namespace {

using wire::ErrorCode;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// Strings a peer sends end up in JSON and file names: accept a boring alphabet only.
bool ValidModuleName(std::string_view name) {
  return !name.empty() && name.size() <= 256 && std::all_of(name.begin(), name.end(), NameChar);
}
bool ValidMetricName(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), NameChar);
}
bool IsLowerHexDigest(std::string_view d) {
  return d.size() == 64 && std::all_of(d.begin(), d.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

std::string PrintableName(std::string_view name) {
  std::string out;
  for (unsigned char c : name.substr(0, 128)) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += StrCat("\\x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]);
    }
  }
  return out;
}

Status CheckHelloName(const wire::Hello& hello) {
  if (!wire::ValidClientName(hello.client_name)) {
    return Refusal(ErrorCode::kInvalidField,
                   "client name must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'");
  }
  return OkStatus();
}

Status CheckHelloModel(const wire::Hello& hello, const CoordinatorConfig& config,
                       const std::optional<ModelLayout>& layout) {
  const std::string& expected_digest = !config.base_model_sha256.empty() ? config.base_model_sha256
                                       : layout                          ? layout->base_model_sha256
                                                                         : hello.base_model_sha256;
  if (hello.base_model_sha256 != expected_digest || expected_digest.empty()) {
    return Refusal(ErrorCode::kBaseModelMismatch, "base model digest ", hello.base_model_sha256,
                   " differs from the federation's ", expected_digest,
                   " (every client must load the same base weights)");
  }
  if (!IsLowerHexDigest(hello.base_model_sha256)) {
    return Refusal(ErrorCode::kInvalidField, "base model digest must be 64 lowercase hex digits");
  }
  if (hello.modules.empty() || hello.modules.size() > kMaxHelloModules) {
    return Refusal(ErrorCode::kInvalidField, "hello lists ", hello.modules.size(), " modules (1..",
                   kMaxHelloModules, " allowed)");
  }
  std::set<std::string, std::less<>> names;
  for (const wire::ModuleInfo& m : hello.modules) {
    if (!ValidModuleName(m.name) || m.d_out <= 0 || m.d_in <= 0 || m.d_out > kMaxModuleDim ||
        m.d_in > kMaxModuleDim || !names.insert(m.name).second) {
      return Refusal(ErrorCode::kInvalidField, "invalid or duplicate module '",
                     PrintableName(m.name), "' [", m.d_out, " x ", m.d_in,
                     "] (names of [A-Za-z0-9._-], dimensions 1..", kMaxModuleDim, ")");
    }
  }
  // The federation's LoRA must fit this model before the model may define the federation.
  Result<std::vector<wire::ModuleInfo>> targets = lora::SelectTargets(hello.modules, config.lora);
  if (!targets.ok()) return Refusal(ErrorCode::kBaseModelMismatch, targets.status().message());
  if (layout && layout->modules != hello.modules) {
    return Refusal(ErrorCode::kBaseModelMismatch,
                   "module layout differs from the federation's although the digest matches");
  }
  return OkStatus();
}

Result<wire::AdapterPlan> PlanForHello(const wire::Hello& hello, const CoordinatorConfig& config) {
  Result<wire::AdapterPlan> plan =
      PlanForClient(config.strategy.rank_policy, config.lora, hello.modules, hello.capabilities);
  if (!plan.ok()) return Refusal(ErrorCode::kInvalidField, plan.status().message());
  return plan;
}

namespace {

// The tensors an upload holds or announces (name -> dtype and shape) against its task's.
Status CheckUploadSpecs(const std::map<std::string, TensorSpec, std::less<>>& specs,
                        const ClientTask& task) {
  for (const auto& [name, expected] : task.expected_upload) {
    const auto it = specs.find(name);
    if (it == specs.end()) {
      return Refusal(ErrorCode::kTensorShapeMismatch, "missing tensor '", name, "'");
    }
    const TensorSpec& spec = expected.spec;
    if (it->second.dtype != spec.dtype) {
      return Refusal(ErrorCode::kTensorDtypeMismatch, "tensor '", name, "' is ",
                     DTypeName(it->second.dtype), ", expected ", DTypeName(spec.dtype));
    }
    const std::vector<std::int64_t>& shape = it->second.shape;
    bool fits = shape.size() == spec.shape.size();
    for (std::size_t d = 0; fits && d < shape.size(); ++d) {
      fits = static_cast<int>(d) == expected.shrinkable_dim
                 ? shape[d] >= 1 && shape[d] <= spec.shape[d]
                 : shape[d] == spec.shape[d];
    }
    if (!fits) {
      return Refusal(ErrorCode::kTensorShapeMismatch, "tensor '", name, "' has shape ",
                     ShapeString(shape), ", expected ", ShapeString(spec.shape),
                     expected.shrinkable_dim >= 0 ? " (or smaller along the rank)" : "");
    }
  }
  for (const auto& [name, spec] : specs) {
    if (!task.expected_upload.contains(name)) {
      return Refusal(ErrorCode::kTensorShapeMismatch, "unexpected tensor '", name, "'");
    }
  }
  return OkStatus();
}

// An upload's counts and metrics.
Status CheckUploadFields(const wire::Update& update, const ClientTask& task,
                         std::uint64_t max_examples);

}  // namespace

std::uint64_t SamplesLimit(const wire::TrainSpec& t, std::uint64_t examples) {
  const std::uint64_t batch = std::max<std::uint64_t>(t.batch_size, 1);
  return t.local_epochs > 0
             ? std::uint64_t{t.local_epochs} * ((examples + batch - 1) / batch) * batch
             : std::uint64_t{t.local_steps} * batch;
}

Status ValidateUpload(const wire::Update& update, const ClientTask& task,
                      std::uint64_t max_examples) {
  std::map<std::string, TensorSpec, std::less<>> specs;
  for (const auto& [name, t] : update.tensors) specs.emplace(name, t.spec());
  FEDLORA_RETURN_IF_ERROR(CheckUploadSpecs(specs, task));
  for (const auto& [name, t] : update.tensors) {
    if (!AllFinite(t)) {
      return Refusal(ErrorCode::kNonFiniteTensor, "tensor '", name, "' contains NaN or infinity");
    }
  }
  return CheckUploadFields(update, task, max_examples);
}

Status ValidateUploadHead(const wire::Update& update, std::span<const wire::TensorRef> tensors,
                          const ClientTask& task, std::uint64_t max_examples) {
  std::map<std::string, TensorSpec, std::less<>> specs;
  for (const wire::TensorRef& ref : tensors) specs.emplace(ref.name, TensorSpec{ref.dtype, ref.shape});
  FEDLORA_RETURN_IF_ERROR(CheckUploadSpecs(specs, task));
  return CheckUploadFields(update, task, max_examples);
}

namespace {

Status CheckUploadFields(const wire::Update& update, const ClientTask& task,
                         std::uint64_t max_examples) {
  if (update.num_samples == 0 || update.num_examples == 0) {
    return Refusal(ErrorCode::kInvalidField, "num_samples and num_examples must be > 0");
  }
  // Examples processed this round (the `samples` weighting) cannot exceed what the task asked
  // for: its steps x batch, or its epochs over the examples held (in whole batches), or the
  // examples an initialisation task asked to read.
  const std::uint64_t limit =
      std::max<std::uint64_t>(SamplesLimit(task.train, std::min(update.num_examples, max_examples)),
                              task.plan.init_samples);
  if (update.num_samples > limit) {
    return Refusal(ErrorCode::kInvalidField, "num_samples ", update.num_samples,
                   " exceeds what the task could process (", limit, ")");
  }
  if (update.metrics.size() > kMaxUpdateMetrics) {
    return Refusal(ErrorCode::kInvalidField, update.metrics.size(), " metrics (at most ",
                   kMaxUpdateMetrics, ")");
  }
  for (const auto& [name, v] : update.metrics) {
    if (!ValidMetricName(name)) {
      return Refusal(ErrorCode::kInvalidField, "metric name '", PrintableName(name),
                     "' is not 1-64 characters of [A-Za-z0-9._-]");
    }
    if (!std::isfinite(v)) {
      return Refusal(ErrorCode::kInvalidField, "metric '", name, "' is not finite");
    }
  }
  return OkStatus();
}

}  // namespace

Status CheckEvalResult(const wire::EvalResult& result) {
  if (!std::isfinite(result.loss) || result.loss < 0 || result.num_tokens == 0) {
    return Refusal(ErrorCode::kInvalidField, "loss must be finite and >= 0, num_tokens > 0");
  }
  for (const auto& [name, value] : result.metrics) {  // Summed into metrics.jsonl.
    if (name.starts_with("class_") && name.ends_with("_examples") &&
        !(value >= 0.0 && value <= static_cast<double>(result.num_examples))) {
      return Refusal(ErrorCode::kInvalidField, "metric '", name, "' must be in [0, num_examples]");
    }
  }
  for (const char* share : {"accuracy", "exact_match"}) {  // Averaged into metrics.jsonl.
    const auto it = result.metrics.find(share);
    if (it != result.metrics.end() && !(it->second >= 0.0 && it->second <= 1.0)) {
      return Refusal(ErrorCode::kInvalidField, "metric '", share, "' must be in [0, 1]");
    }
  }
  return OkStatus();
}

}  // namespace fedlora::server
