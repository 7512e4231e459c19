#include "server/strategies/fedsvd.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/lora/factor_math.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {
namespace {

// FFA's accumulator, then the refactoring of the aggregate.
class RefactoringAccumulator final : public RoundAccumulator {
 public:
  RefactoringAccumulator(const FedSvd& strategy, std::uint64_t round,
                         std::unique_ptr<RoundAccumulator> inner)
      : strategy_(strategy), round_(round), inner_(std::move(inner)) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override {
    return inner_->Fold(update, task);
  }
  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override {
    GlobalState next = state;
    FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, inner_->Finish(next, uploads));
    FEDLORA_RETURN_IF_ERROR(strategy_.Refactor(next, round_, report));
    state = std::move(next);
    return report;
  }

 private:
  const FedSvd& strategy_;
  std::uint64_t round_;
  std::unique_ptr<RoundAccumulator> inner_;
};

}  // namespace

Result<AggregateReport> FedSvd::FinishSecure(GlobalState& state, std::uint64_t round,
                                             const secagg::SecureSum& sum) {
  GlobalState next = state;
  FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, ffa_.FinishSecure(next, round, sum));
  FEDLORA_RETURN_IF_ERROR(Refactor(next, round, report));
  state = std::move(next);
  return report;
}

Result<std::unique_ptr<RoundAccumulator>> FedSvd::Begin(const GlobalState& state,
                                                        std::uint64_t round) {
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<RoundAccumulator> inner, ffa_.Begin(state, round));
  return std::unique_ptr<RoundAccumulator>(
      std::make_unique<RefactoringAccumulator>(*this, round, std::move(inner)));
}

Status FedSvd::Refactor(GlobalState& state, std::uint64_t round, AggregateReport& report) const {
  if (svd_.period == 0 || round == 0 || round % svd_.period != 0) return OkStatus();
  TensorMap next = state.adapter;
  int refactored = 0, kept = 0;
  double worst = 0;
  for (const std::string& module : AdapterModules(state.adapter)) {
    const std::string a_name = module + ".lora_A.weight", b_name = module + ".lora_B.weight";
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, Load64(state.adapter, a_name));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, Load64(state.adapter, b_name));
    const std::int64_t rank = a.size(0);
    const lora::FactorPair pair{b, a};
    FEDLORA_ASSIGN_OR_RETURN(lora::FactorPair svd,
                             lora::TruncatedSvd(std::span<const lora::FactorPair>(&pair, 1), rank));
    if (svd.A.size(0) < rank) {  // Rank-deficient product: no basis to take A from.
      ++kept;
      continue;
    }
    const at::Tensor before = at::matmul(b, a);
    const double scale = before.norm().item<double>();
    if (scale > 0) {
      worst = std::max(worst, (at::matmul(svd.B, svd.A) - before).norm().item<double>() / scale);
    }
    FEDLORA_ASSIGN_OR_RETURN(next[a_name], Store(svd.A, config_.state_dtype));
    FEDLORA_ASSIGN_OR_RETURN(next[b_name], Store(svd.B, config_.state_dtype));
    ++refactored;
  }
  state.adapter = std::move(next);
  report.metrics["fedsvd_refactored"] = refactored;
  report.metrics["fedsvd_kept"] = kept;
  report.metrics["fedsvd_product_error"] = worst;
  return OkStatus();
}

}  // namespace fedlora::server
