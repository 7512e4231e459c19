#include "server/strategies/weighted_sums.h"

#include <vector>

namespace fedlora::server {

Status WeightedSums::Fold(std::span<const Term> terms, std::string_view client) {
  return Apply(terms, client, 1.0);
}

Status WeightedSums::Unfold(std::span<const Term> terms, std::string_view client) {
  return Apply(terms, client, -1.0);
}

Status WeightedSums::Apply(std::span<const Term> terms, std::string_view client, double sign) {
  std::vector<std::string> created;
  for (const Term& t : terms) {
    if (!sums_.contains(t.name)) {
      sums_.emplace(std::string(t.name), Entry{ExactSum(t.x->shape), ExactSum({1})});
      created.emplace_back(t.name);
    }
  }
  // Terms of one weight go through AddEach together (all or nothing, across cores); terms of
  // different weights (HetLoRA's per-module norms) one group at a time, undone on failure.
  std::vector<std::pair<double, std::vector<ExactSum::Job>>> groups;
  std::vector<Tensor> weights;
  weights.reserve(terms.size());
  for (const Term& t : terms) {
    const double w = sign * t.weight;
    if (groups.empty() || groups.back().first != w) groups.push_back({w, {}});
    Entry& e = sums_.find(t.name)->second;
    groups.back().second.push_back({&e.sum, t.x, t.name});
    weights.push_back(MakeF64({1}, std::span<const double>(&t.weight, 1)));
  }
  std::int64_t elements = 0;
  for (const Term& t : terms) elements += t.x->numel();
  const int threads = FoldThreads(elements);
  Status status;
  std::size_t done = 0;
  for (; done < groups.size(); ++done) {
    status = ExactSum::AddEach(groups[done].second, groups[done].first, threads);
    if (!status.ok()) break;
  }
  if (status.ok()) {
    std::vector<ExactSum::Job> weight_jobs;
    for (std::size_t i = 0; i < terms.size(); ++i) {
      weight_jobs.push_back(
          {&sums_.find(terms[i].name)->second.weight, &weights[i], terms[i].name});
    }
    status = ExactSum::AddEach(weight_jobs, sign, 1);
  }
  if (!status.ok()) {
    for (std::size_t g = 0; g < done; ++g) {
      (void)ExactSum::AddEach(groups[g].second, -groups[g].first, threads);
    }
    for (const std::string& name : created) sums_.erase(name);
    return status.WithContext(StrCat("folding the upload of client ", client));
  }
  return OkStatus();
}

Result<TensorMap> WeightedSums::Means(DType dtype) const {
  TensorMap out;
  for (const auto& [name, e] : sums_) {
    FEDLORA_ASSIGN_OR_RETURN(Tensor mean, Mean(name, dtype));
    out.emplace(name, std::move(mean));
  }
  return out;
}

Result<Tensor> WeightedSums::Mean(std::string_view name, DType dtype) const {
  const auto it = sums_.find(name);
  if (it == sums_.end()) return NotFound("no upload carried tensor '", name, "'");
  const double total = it->second.weight.Scaled(1.0).front();
  if (!(total > 0)) {
    return InvalidArgument("tensor '", name,
                           "': the uploads folded into it carry a total weight of ", total);
  }
  return it->second.sum.ToTensor(dtype, 1.0 / total);
}

TensorMap WeightedSums::Scaled(DType dtype, double scale) const {
  TensorMap out;
  for (const auto& [name, e] : sums_) out.emplace(name, e.sum.ToTensor(dtype, scale));
  return out;
}

double WeightedSums::WeightOf(std::string_view name) const {
  const auto it = sums_.find(name);
  return it == sums_.end() ? 0.0 : it->second.weight.Scaled(1.0).front();
}

}  // namespace fedlora::server
