#include "server/strategies/fedavg.h"

#include <algorithm>
#include <map>

#include "common/lora/adapter_layout.h"
#include "server/strategies/weighted_sums.h"

namespace fedlora::server {

Result<TensorMap> WeightedMean(std::span<const ClientUpdate> updates,
                               std::span<const double> weights, DType dtype) {
  FEDLORA_CHECK(!updates.empty() && updates.size() == weights.size());
  FEDLORA_RETURN_IF_ERROR(CheckUpdatesAlign(updates));
  WeightedSums sums;
  for (std::size_t k = 0; k < updates.size(); ++k) {
    std::vector<WeightedSums::Term> terms;
    for (const auto& [name, t] : updates[k].tensors) terms.push_back({name, &t, weights[k]});
    FEDLORA_RETURN_IF_ERROR(sums.Fold(terms, updates[k].client_id));
  }
  return sums.Means(dtype);
}

Result<std::vector<double>> ClientWeights(std::span<const ClientUpdate> updates,
                                          const FedAvgConfig& config) {
  return ComputeWeights(updates, config.weighting, config.max_weight_share);
}

double RawWeight(const ClientUpdate& update, Weighting weighting) {
  switch (weighting) {
    case Weighting::kExamples: return static_cast<double>(update.num_examples);
    case Weighting::kSamples: return static_cast<double>(update.num_samples);
    case Weighting::kUniform: return 1.0;
  }
  return 1.0;
}

bool MeanIsLinear(const FedAvgConfig& config) {
  return config.rule == nullptr && !(config.max_weight_share < 1.0);
}

namespace {

// A copy of an upload's counts without its tensors (for the cap's weights and the robust rules).
ClientUpdate Counts(const ClientUpdate& u) {
  return ClientUpdate{u.client_id, u.num_samples, u.num_examples, u.metrics, {}};
}

class MeanAccumulator final : public RoundAccumulator {
 public:
  MeanAccumulator(const FedAvgConfig& config, bool merge) : config_(config), merge_(merge) {}

  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    if (!counts_.empty()) {
      FEDLORA_RETURN_IF_ERROR(CheckSameNames(update));
    }
    if (MeanIsLinear(config_)) {
      const double w = RawWeight(update, config_.weighting);
      std::vector<WeightedSums::Term> terms;
      for (const auto& [name, t] : update.tensors) terms.push_back({name, &t, w});
      FEDLORA_RETURN_IF_ERROR(sums_.Fold(terms, update.client_id));
    }
    counts_.insert_or_assign(update.client_id, Counts(update));
    if (names_.empty()) {
      for (const auto& [name, t] : update.tensors) names_.push_back({name, t.shape});
    }
    return OkStatus();
  }

  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override {
    std::vector<ClientUpdate> counts;  // Client-id order (std::map).
    for (const auto& [id, c] : counts_) counts.push_back(c);
    AggregateReport report;
    TensorMap combined;
    if (MeanIsLinear(config_)) {
      RawWeights raw;
      for (const ClientUpdate& c : counts) raw[c.client_id] = RawWeight(c, config_.weighting);
      FEDLORA_ASSIGN_OR_RETURN(const double total, WeightTotal(raw, config_.weighting));
      FEDLORA_ASSIGN_OR_RETURN(combined, sums_.Means(config_.state_dtype));
      for (const auto& [id, w] : raw) report.weights[id] = w / total;
    } else if (config_.rule == nullptr) {
      // Share cap: the weights need every count, so a second pass folds with the capped shares.
      FEDLORA_ASSIGN_OR_RETURN(std::vector<double> shares, ClientWeights(counts, config_));
      std::map<std::string, double, std::less<>> share_of;
      for (std::size_t k = 0; k < counts.size(); ++k) share_of[counts[k].client_id] = shares[k];
      WeightedSums sums;
      FEDLORA_RETURN_IF_ERROR(uploads.ForEach([&](const ClientUpdate& u, const ClientTask&) {
        std::vector<WeightedSums::Term> terms;
        for (const auto& [name, t] : u.tensors) terms.push_back({name, &t, share_of.at(u.client_id)});
        return sums.Fold(terms, u.client_id);
      }));
      combined = sums.Scaled(config_.state_dtype, 1.0);
      report.weights = std::move(share_of);
    } else if (config_.rule->coordinate_wise()) {
      // Median, trimmed mean: slice by slice of every tensor, N x slice values at a time.
      FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(counts, config_));
      FEDLORA_ASSIGN_OR_RETURN(combined, CombineBySlices(counts, weights, uploads, &report));
    } else {
      // Multi-Krum compares whole uploads: it looks at every upload at once.
      std::vector<ClientUpdate> all;
      FEDLORA_RETURN_IF_ERROR(uploads.ForEach([&](const ClientUpdate& u, const ClientTask&) {
        all.push_back(u);
        return OkStatus();
      }));
      FEDLORA_ASSIGN_OR_RETURN(std::vector<double> weights, ClientWeights(all, config_));
      FEDLORA_ASSIGN_OR_RETURN(RuleOutcome outcome,
                               config_.rule->Combine(all, weights, config_.state_dtype));
      for (std::size_t k = 0; k < all.size(); ++k) {
        report.weights[all[k].client_id] = outcome.shares[k];
      }
      for (auto& [key, value] : outcome.metrics) report.metrics[key] = value;
      combined = std::move(outcome.combined);
    }
    if (merge_) {
      for (auto& [name, t] : combined) state.adapter[name] = std::move(t);
    } else {
      state.adapter = std::move(combined);
    }
    return report;
  }

 private:
  // Every upload of a round carries the same tensor names and shapes (as CheckUpdatesAlign).
  Status CheckSameNames(const ClientUpdate& update) const {
    std::size_t i = 0;
    for (const auto& [name, t] : update.tensors) {
      if (i >= names_.size() || names_[i].first != name) {
        return InvalidArgument("client ", update.client_id, " uploaded tensor '", name,
                               "', which the round's other uploads do not have");
      }
      if (names_[i].second != t.shape) {
        return InvalidArgument("client ", update.client_id, " uploaded tensor '", name,
                               "' with shape ", ShapeString(t.shape), ", others have ",
                               ShapeString(names_[i].second));
      }
      ++i;
    }
    if (i != names_.size()) {
      return InvalidArgument("client ", update.client_id, " did not upload tensor '",
                             names_[i].first, "'");
    }
    return OkStatus();
  }

  // The rule applied to slices of at most slice_values / N elements of each tensor in turn.
  Result<TensorMap> CombineBySlices(const std::vector<ClientUpdate>& counts,
                                    const std::vector<double>& weights,
                                    const UploadSource& uploads, AggregateReport* report) const {
    const auto n = static_cast<std::int64_t>(counts.size());
    const std::int64_t slice =
        std::max<std::int64_t>(1, config_.slice_values / std::max<std::int64_t>(n, 1));
    std::int64_t total = 0;
    for (const auto& [name, shape] : names_) total += NumElements(shape).value();
    std::vector<double> shares(counts.size(), 0.0);
    TensorMap out;
    std::vector<std::vector<double>> values;
    for (const auto& [name, shape] : names_) {
      const std::int64_t numel = NumElements(shape).value();
      std::vector<double> result(static_cast<std::size_t>(numel));
      for (std::int64_t begin = 0; begin < numel; begin += slice) {
        const std::int64_t count = std::min(slice, numel - begin);
        FEDLORA_RETURN_IF_ERROR(uploads.ReadSlices(name, begin, count, values));
        std::vector<ClientUpdate> pieces(counts.size());
        for (std::size_t k = 0; k < counts.size(); ++k) {
          pieces[k].client_id = counts[k].client_id;
          pieces[k].tensors.emplace(name, MakeF64({count}, values[k]));
        }
        FEDLORA_ASSIGN_OR_RETURN(RuleOutcome o,
                                 config_.rule->Combine(pieces, weights, DType::kF64));
        const std::vector<double> part = ToDoubles(o.combined.at(name));
        std::copy(part.begin(), part.end(), result.begin() + begin);
        for (std::size_t k = 0; k < shares.size(); ++k) {
          shares[k] += o.shares[k] * static_cast<double>(count) / static_cast<double>(total);
        }
        for (auto& [key, value] : o.metrics) report->metrics[key] = value;
      }
      out.emplace(name, FromDoubles(config_.state_dtype, shape, result));
    }
    for (std::size_t k = 0; k < counts.size(); ++k) report->weights[counts[k].client_id] = shares[k];
    return out;
  }

  FedAvgConfig config_;
  bool merge_;
  WeightedSums sums_;
  std::map<std::string, ClientUpdate, std::less<>> counts_;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> names_;
};

}  // namespace

wire::SecAggWeighting SecureWeighting(Weighting w) {
  switch (w) {
    case Weighting::kExamples:
      return wire::SecAggWeighting::kExamples;
    case Weighting::kSamples:
      return wire::SecAggWeighting::kSamples;
    case Weighting::kUniform:
      return wire::SecAggWeighting::kUniform;
  }
  return wire::SecAggWeighting::kUniform;
}

std::optional<SecureSpec> MeanSecureSpec(const FedAvgConfig& config) {
  if (!MeanIsLinear(config)) return std::nullopt;
  return SecureSpec{SecureWeighting(config.weighting), false, 1.0};
}

Result<AggregateReport> FinishMeanSecure(const FedAvgConfig& config, bool merge, GlobalState& state,
                                         const secagg::SecureSum& sum) {
  TensorMap combined;
  for (auto& [name, mean] : sum.Means()) {
    combined.emplace(name, FromDoubles(config.state_dtype, mean.shape, ToDoubles(mean)));
  }
  for (const auto& [name, w] : sum.weights) {
    if (!combined.contains(name)) {
      return InvalidArgument("secure sum: no survivor weighed tensor '", name,
                             "' (its weight total is ", w, ")");
    }
  }
  if (merge) {
    for (auto& [name, t] : combined) state.adapter[name] = std::move(t);
  } else {
    state.adapter = std::move(combined);
  }
  return AggregateReport{};
}

std::unique_ptr<RoundAccumulator> MakeMeanAccumulator(const FedAvgConfig& config, bool merge) {
  return std::make_unique<MeanAccumulator>(config, merge);
}

Result<GlobalState> FedAvg::Initialize(const ModelLayout& layout,
                                       std::optional<GlobalState> restored) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<wire::ModuleInfo> targets,
                           lora::SelectTargets(layout.modules, config_.lora));
  if (restored) return std::move(*restored);
  GlobalState state;
  state.adapter = lora::InitAdapter(targets, config_.lora.rank, config_.seed);
  return state;
}

ClientTask StandardTask(const ClientInfo& client, const wire::LoraSpec& lora,
                        const wire::TrainSpec& train, TensorMap tensors, const TensorMap& shapes) {
  ClientTask task;
  task.client_id = client.id;
  task.lora = lora;
  task.train = train;
  task.tensors = std::move(tensors);
  for (const auto& [name, t] : shapes) {
    task.expected_upload[name] = ExpectedTensor{TensorSpec{train.upload_dtype, t.shape}};
  }
  return task;
}

Result<std::vector<ClientTask>> FedAvg::Configure(const GlobalState& state, std::uint64_t round,
                                                  std::span<const ClientInfo> selected) {
  std::vector<ClientTask> tasks;
  tasks.reserve(selected.size());
  for (const ClientInfo& client : selected) {
    tasks.push_back(StandardTask(client, config_.lora, config_.train, state.adapter, state.adapter));
  }
  return tasks;
}

Result<std::unique_ptr<RoundAccumulator>> FedAvg::Begin(const GlobalState& state,
                                                        std::uint64_t round) {
  return MakeMeanAccumulator(config_, /*merge=*/false);
}

EvalSpec FedAvg::Evaluation(const GlobalState& state, const ClientInfo& client) const {
  return EvalSpec{config_.lora, {}, state.adapter, {}};
}

}  // namespace fedlora::server
