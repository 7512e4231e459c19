#include "server/strategies/corrections.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <vector>

#include "common/lora/deterministic_apply.h"
#include "common/lora/factor_math.h"
#include "common/lora/tensor_bridge.h"
#include "common/log.h"

namespace fedlora::server {
namespace {

struct ModuleShape {
  std::int64_t d_out = 0, d_in = 0, rank = 0;  // rank: total K so far (dense counts as full).
};

std::map<std::string, ModuleShape> Shapes(const CorrectionLog& log) {
  std::map<std::string, ModuleShape> shapes;
  const auto add = [&](const CorrectionEntry& e) {
    for (const auto& [module, c] : e.modules) {
      ModuleShape& s = shapes[module];
      if (c.is_dense()) {
        s.d_out = c.dense.shape[0];
        s.d_in = c.dense.shape[1];
        s.rank += std::min(s.d_out, s.d_in);
      } else {
        s.d_out = c.u.shape[0];
        s.d_in = c.v.shape[1];
        s.rank += c.u.shape[1];
      }
    }
  };
  if (log.snapshot()) add(*log.snapshot());
  for (const CorrectionEntry& e : log.entries()) add(e);
  return shapes;
}

// The factor pairs of every correction of `module`, in log order, in f64. A dense delta D
// becomes the pair (D, I).
Result<std::vector<lora::FactorPair>> PairsOf(const CorrectionLog& log, const std::string& module) {
  std::vector<lora::FactorPair> pairs;
  const auto add = [&](const CorrectionEntry& e) -> Status {
    const auto it = e.modules.find(module);
    if (it == e.modules.end()) return OkStatus();
    const ModuleCorrection& c = it->second;
    if (c.is_dense()) {
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor d, lora::FromWireAs(c.dense, at::kDouble));
      const std::int64_t d_in = d.size(1);
      pairs.push_back({d, at::eye(d_in, d.options())});
    } else {
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor u, lora::FromWireAs(c.u, at::kDouble));
      FEDLORA_ASSIGN_OR_RETURN(at::Tensor v, lora::FromWireAs(c.v, at::kDouble));
      pairs.push_back({u, v});
    }
    return OkStatus();
  };
  if (log.snapshot()) FEDLORA_RETURN_IF_ERROR(add(*log.snapshot()));
  for (const CorrectionEntry& e : log.entries()) FEDLORA_RETURN_IF_ERROR(add(e));
  return pairs;
}

}  // namespace

std::size_t EstimatedSnapshotBytes(const CorrectionLog& log, DType dtype) {
  std::size_t total = 0;
  for (const auto& [module, s] : Shapes(log)) {
    const std::int64_t k = std::min({s.rank, s.d_out, s.d_in});
    total += static_cast<std::size_t>(std::min(s.d_out * s.d_in, k * (s.d_out + s.d_in))) *
             ByteWidth(dtype);
  }
  return total;
}

Status AppendCorrection(CorrectionLog& log, CorrectionEntry entry, const CorrectionConfig& config,
                        DType dtype) try {
  log.Append(std::move(entry));
  const std::size_t replay = log.ReplayBytes();
  const std::size_t snapshot = EstimatedSnapshotBytes(log, dtype);
  if (static_cast<double>(replay) < config.compact_ratio * static_cast<double>(snapshot)) {
    return OkStatus();
  }
  CorrectionEntry compacted;
  compacted.version = log.latest_version();
  for (const auto& [module, shape] : Shapes(log)) {
    FEDLORA_ASSIGN_OR_RETURN(std::vector<lora::FactorPair> pairs, PairsOf(log, module));
    FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair pair, lora::Compact(pairs));
    const std::int64_t k = pair.B.size(1);
    ModuleCorrection c;
    if (k * (shape.d_out + shape.d_in) >= shape.d_out * shape.d_in) {
      // Dense is smaller: form it once, with the same deterministic fp32 kernel clients use.
      FEDLORA_ASSIGN_OR_RETURN(Tensor u, lora::ToWire(pair.B, DType::kF32));
      FEDLORA_ASSIGN_OR_RETURN(Tensor v, lora::ToWire(pair.A, DType::kF32));
      Tensor dense = Zeros(DType::kF32, {shape.d_out, shape.d_in});
      FEDLORA_RETURN_IF_ERROR(lora::AddProductDeterministic(
          std::span<float>(reinterpret_cast<float*>(dense.data.data()),
                           static_cast<std::size_t>(shape.d_out * shape.d_in)),
          std::span<const float>(reinterpret_cast<const float*>(u.data.data()),
                                 static_cast<std::size_t>(shape.d_out * k)),
          std::span<const float>(reinterpret_cast<const float*>(v.data.data()),
                                 static_cast<std::size_t>(k * shape.d_in)),
          shape.d_out, shape.d_in, k));
      if (dtype == DType::kF32) {
        c.dense = std::move(dense);
      } else {
        FEDLORA_ASSIGN_OR_RETURN(c.dense, lora::ToWire(pair.B.matmul(pair.A), dtype));
      }
    } else if (k > 0) {
      FEDLORA_ASSIGN_OR_RETURN(c.u, lora::ToWire(pair.B, dtype));
      FEDLORA_ASSIGN_OR_RETURN(c.v, lora::ToWire(pair.A, dtype));
    } else {
      continue;  // The corrections of this module cancel out exactly.
    }
    compacted.modules.emplace(module, std::move(c));
  }
  LogDebug("compacted base corrections up to version ", compacted.version, ": ", replay,
           " bytes of log -> ", compacted.bytes(), " bytes");
  log.ReplaceWithSnapshot(std::move(compacted));
  return OkStatus();
} catch (const c10::Error& e) {
  return Internal("compacting base corrections: ", e.what_without_backtrace());
}

}  // namespace fedlora::server
