#include "sim/adversary.h"

#include <random>

#include "common/seed.h"

namespace fedlora::sim {

Status ParseAdversaryConfig(const config::ConfigSection& s, AdversaryConfig* out) {
  FEDLORA_RETURN_IF_ERROR(s.Read("clients", &out->clients));
  FEDLORA_RETURN_IF_ERROR(s.Read("kind", &out->kind));
  FEDLORA_RETURN_IF_ERROR(s.Read("factor", &out->factor));
  FEDLORA_RETURN_IF_ERROR(s.Read("stddev", &out->stddev));
  FEDLORA_RETURN_IF_ERROR(s.Read("seed", &out->seed));
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  if (out->kind != "scale" && out->kind != "random") {
    return InvalidArgument(s.PathOf("kind"), ": '", out->kind, "' is not scale or random");
  }
  if (!(out->stddev >= 0)) return InvalidArgument(s.PathOf("stddev"), " must be >= 0");
  return OkStatus();
}

Result<wire::Update> AdversarialWorker::Train(const wire::RoundTask& task, std::stop_token stop) {
  Result<wire::Update> update = inner_->Train(task, std::move(stop));
  if (!update.ok()) return update;
  std::mt19937_64 rng(MixSeed(MixSeed(config_.seed, index_), task.round));
  std::normal_distribution<double> noise(0.0, config_.stddev);
  for (auto& [name, t] : update->tensors) {
    std::vector<double> values = ToDoubles(t);
    // The change is measured from what the task sent (zero where it sent nothing of that shape).
    const auto sent = task.tensors.find(name);
    const std::vector<double> start = sent != task.tensors.end() && sent->second.shape == t.shape
                                          ? ToDoubles(sent->second)
                                          : std::vector<double>(values.size(), 0.0);
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = config_.kind == "scale" ? start[i] + config_.factor * (values[i] - start[i])
                                          : start[i] + noise(rng);
    }
    t = FromDoubles(t.dtype, t.shape, values);
  }
  return update;
}

}  // namespace fedlora::sim
