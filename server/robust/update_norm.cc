#include "server/robust/update_norm.h"

#include <cmath>

namespace fedlora::server {
namespace {

// What `name` started from, as doubles in the uploaded tensor's row-major layout: the task's
// tensor, or its leading block when the upload is smaller along a dimension (a pruned rank);
// zeros when the task sent no such tensor or its shape does not cover the upload.
std::vector<double> Reference(const ClientTask& task, const std::string& name,
                              const Tensor& uploaded) {
  const std::size_t count = static_cast<std::size_t>(uploaded.numel());
  const auto it = task.tensors.find(name);
  if (it == task.tensors.end() || it->second.shape.size() != uploaded.shape.size()) {
    return std::vector<double>(count, 0.0);
  }
  const std::vector<std::int64_t>& from = it->second.shape;
  const std::vector<std::int64_t>& to = uploaded.shape;
  for (std::size_t d = 0; d < to.size(); ++d) {
    if (to[d] > from[d]) return std::vector<double>(count, 0.0);
  }
  const std::vector<double> full = ToDoubles(it->second);
  if (from == to) return full;
  // Copy the leading block: walk the upload's indices, map each to the task's flat offset.
  std::vector<double> out(count);
  std::vector<std::int64_t> index(to.size(), 0);
  for (std::size_t i = 0; i < count; ++i) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < to.size(); ++d) offset = offset * from[d] + index[d];
    out[i] = full[static_cast<std::size_t>(offset)];
    for (std::size_t d = to.size(); d-- > 0;) {
      if (++index[d] < to[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

}  // namespace

double UpdateNorm(const ClientUpdate& update, const ClientTask& task) {
  double sum = 0;
  for (const auto& [name, t] : update.tensors) {
    const std::vector<double> values = ToDoubles(t);
    const std::vector<double> reference = Reference(task, name, t);
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double d = values[i] - reference[i];
      sum += d * d;
    }
  }
  return std::sqrt(sum);
}

void ScaleChange(ClientUpdate& update, const ClientTask& task, double factor) {
  for (auto& [name, t] : update.tensors) {
    std::vector<double> values = ToDoubles(t);
    const std::vector<double> reference = Reference(task, name, t);
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = reference[i] + factor * (values[i] - reference[i]);
    }
    t = FromDoubles(t.dtype, t.shape, values);
  }
}

}  // namespace fedlora::server
