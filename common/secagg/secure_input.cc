#include "common/secagg/secure_input.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "common/privacy/gaussian_noise.h"
#include "common/secagg/quantize.h"

namespace fedlora::secagg {
namespace {

QuantizeConfig ValueConfig(const wire::SecAggParams& p) {
  return QuantizeConfig{p.clip, p.levels_bits, p.modulus_bits};
}

double Levels(const wire::SecAggParams& p) {
  return static_cast<double>((std::uint64_t{1} << p.levels_bits) - 1);
}

// The sketch indices of `name`'s module in a sketched plan, or null.
const std::vector<std::uint32_t>* SketchOf(const wire::AdapterPlan& plan, std::string_view name) {
  if (plan.mode != wire::AdapterMode::kSketched) return nullptr;
  const std::size_t dot = name.rfind(".lora_");
  if (dot == std::string_view::npos) return nullptr;
  const std::string_view module = name.substr(0, dot);
  for (const wire::ModulePlan& m : plan.modules) {
    if (m.module == module && !m.sketch.empty()) return &m.sketch;
  }
  return nullptr;
}

double CountOf(const wire::SecAggParams& p, const wire::Update& update) {
  switch (p.weighting) {
    case wire::SecAggWeighting::kExamples:
      return static_cast<double>(update.num_examples);
    case wire::SecAggWeighting::kSamples:
      return static_cast<double>(update.num_samples);
    case wire::SecAggWeighting::kUniform:
      return 1.0;
  }
  return 1.0;
}

}  // namespace

Result<std::vector<double>> PlaceInSlot(const wire::SecAggSlot& slot, const wire::AdapterPlan& plan,
                                        const std::vector<std::int64_t>& shape,
                                        std::span<const double> x) {
  const std::int64_t full = NumElements(slot.shape).value();
  std::vector<double> out(static_cast<std::size_t>(full), 0.0);
  if (shape == slot.shape && SketchOf(plan, slot.name) == nullptr) {
    std::copy(x.begin(), x.end(), out.begin());
    return out;
  }
  if (shape.size() != 2 || slot.shape.size() != 2) {
    return InvalidArgument("tensor '", slot.name, "' has shape ", ShapeString(shape),
                           ", which does not fit its secure-aggregation slot ",
                           ShapeString(slot.shape));
  }
  const std::int64_t rows = shape[0], cols = shape[1], full_cols = slot.shape[1];
  const bool is_a = slot.name.find(".lora_A.") != std::string::npos;
  // Where row i / column j of the upload goes: its sketch index, or itself (top-left padding).
  std::vector<std::int64_t> row_at(static_cast<std::size_t>(rows)),
      col_at(static_cast<std::size_t>(cols));
  for (std::int64_t i = 0; i < rows; ++i) row_at[static_cast<std::size_t>(i)] = i;
  for (std::int64_t j = 0; j < cols; ++j) col_at[static_cast<std::size_t>(j)] = j;
  if (const std::vector<std::uint32_t>* sketch = SketchOf(plan, slot.name)) {
    std::vector<std::int64_t>& along = is_a ? row_at : col_at;
    if (sketch->size() != along.size()) {
      return InvalidArgument("tensor '", slot.name, "' has ", along.size(), " rank entries but ",
                             "its sketch has ", sketch->size(), " indices");
    }
    for (std::size_t k = 0; k < along.size(); ++k) along[k] = (*sketch)[k];
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::int64_t r = row_at[static_cast<std::size_t>(i)];
      const std::int64_t c = col_at[static_cast<std::size_t>(j)];
      if (r >= slot.shape[0] || c >= full_cols) {
        return InvalidArgument("tensor '", slot.name, "' of shape ", ShapeString(shape),
                               " does not fit its secure-aggregation slot ",
                               ShapeString(slot.shape));
      }
      out[static_cast<std::size_t>(r * full_cols + c)] = x[static_cast<std::size_t>(i * cols + j)];
    }
  }
  return out;
}

Result<std::uint64_t> SecureVectorLength(const wire::SecAggParams& params) {
  if (params.layout.empty()) return InvalidArgument("secure aggregation: the layout is empty");
  std::uint64_t total = 0;
  for (const wire::SecAggSlot& slot : params.layout) {
    Result<std::int64_t> n = NumElements(slot.shape);
    if (!n.ok()) {
      return InvalidArgument("secure-aggregation slot '", slot.name, "': ", n.status().message());
    }
    total += static_cast<std::uint64_t>(*n) + 1;
  }
  return total;
}

Result<SecureInput> MakeSecureInput(const wire::SecAggParams& params, const wire::AdapterPlan& plan,
                                    const TensorMap& sent, const wire::Update& update,
                                    std::uint64_t rounding_seed, const InputNoise* noise) {
  FEDLORA_ASSIGN_OR_RETURN(const std::uint64_t length, SecureVectorLength(params));
  FEDLORA_RETURN_IF_ERROR(CheckQuantization(ValueConfig(params), 1));
  if (!(params.weight_scale > 0) || !std::isfinite(params.weight_scale)) {
    return InvalidArgument("secure aggregation: weight_scale must be finite and > 0");
  }
  for (const auto& [name, t] : update.tensors) {
    const bool known = std::any_of(params.layout.begin(), params.layout.end(),
                                   [&](const wire::SecAggSlot& s) { return s.name == name; });
    if (!known) {
      return InvalidArgument("tensor '", name, "' has no slot in the secure-aggregation layout");
    }
  }
  SecureInput in;
  const double count = CountOf(params, update);
  double w = count / params.weight_scale;
  if (!(w <= 1.0)) {  // A count above the scale the coordinator announced: counted, never silent.
    ++in.clipped;
    w = 1.0;
  }
  if (!(w >= 0.0)) w = 0.0;
  in.weight = w;
  in.words.reserve(static_cast<std::size_t>(length));
  const QuantizeConfig values = ValueConfig(params);
  const QuantizeConfig weights{1.0, params.levels_bits, params.modulus_bits};
  std::uint64_t seed = rounding_seed;
  for (const wire::SecAggSlot& slot : params.layout) {
    const auto it = update.tensors.find(slot.name);
    std::vector<double> placed(static_cast<std::size_t>(NumElements(slot.shape).value()), 0.0);
    double slot_weight = 0.0;
    if (it != update.tensors.end()) {
      std::vector<double> x = ToDoubles(it->second);
      if (params.delta) {
        const auto ref = sent.find(slot.name);
        if (ref == sent.end() || ref->second.shape != it->second.shape) {
          return InvalidArgument("tensor '", slot.name, "': the task sent no tensor of shape ",
                                 ShapeString(it->second.shape), " to take the delta from");
        }
        const std::vector<double> s = ToDoubles(ref->second);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = s[i] - x[i];
      }
      FEDLORA_ASSIGN_OR_RETURN(placed, PlaceInSlot(slot, plan, it->second.shape, x));
      for (double& v : placed) v *= w;
      slot_weight = w;
    }
    if (noise != nullptr) {
      privacy::AddGaussianNoise(placed, noise->stddev,
                                privacy::DeriveNoiseSeed(noise->seed, slot.name));
    }
    Quantized q = Quantize(placed, values, seed++);
    in.clipped += q.clipped;
    in.words.insert(in.words.end(), q.values.begin(), q.values.end());
    const double encoded = 2.0 * slot_weight - 1.0;
    Quantized qw = Quantize(std::span<const double>(&encoded, 1), weights, seed++);
    in.words.push_back(qw.values.front());
  }
  return in;
}

TensorMap SecureSum::Means() const {
  TensorMap out;
  for (const auto& [name, sum] : weighted) {
    const double w = weights.at(name);
    if (!(w > 0)) continue;
    std::vector<double> v = ToDoubles(sum);
    for (double& x : v) x /= w;
    out.emplace(name, MakeF64(sum.shape, v));
  }
  return out;
}

Result<SecureSum> DecodeSecureSum(const wire::SecAggParams& params,
                                  std::span<const std::uint32_t> sum, std::uint64_t survivors) {
  FEDLORA_ASSIGN_OR_RETURN(const std::uint64_t length, SecureVectorLength(params));
  if (sum.size() != length) {
    return InvalidArgument("secure sum has ", sum.size(), " words; the layout needs ", length);
  }
  const QuantizeConfig values = ValueConfig(params);
  SecureSum out;
  out.survivors = survivors;
  out.error_bound = static_cast<double>(survivors) * QuantizationStep(values);
  std::size_t at = 0;
  for (const wire::SecAggSlot& slot : params.layout) {
    const auto n = static_cast<std::size_t>(NumElements(slot.shape).value());
    std::vector<double> v = DequantizeSum(sum.subspan(at, n), survivors, values);
    out.weighted.emplace(slot.name, MakeF64(slot.shape, v));
    // Weights were quantised as 2w - 1 on [0, L]: the level of w is w * L exactly.
    const double w = static_cast<double>(sum[at + n]) / Levels(params);
    out.weights[slot.name] = w;
    if (w > 0) {
      const double weight_error = params.clip * static_cast<double>(survivors) / Levels(params);
      out.mean_error_bound = std::max(out.mean_error_bound, (out.error_bound + weight_error) / w);
    }
    at += n + 1;
  }
  return out;
}

}  // namespace fedlora::secagg
