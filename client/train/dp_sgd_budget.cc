#include "client/train/dp_sgd_budget.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/fs.h"

namespace fedlora::client {
namespace {

std::string ToJson(const privacy::CompositionLog& log, double delta) {
  nlohmann::json runs = nlohmann::json::array();
  for (const privacy::CompositionLog::Run& r : log.runs()) {
    runs.push_back({{"sample_rate", r.q}, {"noise_multiplier", r.sigma}, {"steps", r.steps}});
  }
  return nlohmann::json{{"dp_sgd_steps", std::move(runs)}, {"delta", delta}}.dump(1) + "\n";
}

}  // namespace

Result<DpSgdBudget> DpSgdBudget::Open(std::string path, double target_epsilon, double delta) {
  DpSgdBudget budget;
  budget.path_ = std::move(path);
  budget.target_epsilon_ = target_epsilon;
  budget.delta_ = delta;
  std::error_code ec;
  if (!std::filesystem::exists(budget.path_, ec)) {
    if (ec) return Unavailable(budget.path_, ": ", ec.message());
    return budget;
  }
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(budget.path_));
  try {
    const nlohmann::json doc = nlohmann::json::parse(text);
    for (const nlohmann::json& r : doc.at("dp_sgd_steps")) {
      const double q = r.at("sample_rate").get<double>();
      const double sigma = r.at("noise_multiplier").get<double>();
      const auto steps = r.at("steps").get<std::uint64_t>();
      if (!(q > 0 && q <= 1) || !(sigma >= 0)) {
        return DataLoss(budget.path_, ": a run with sample rate ", q, " and noise multiplier ",
                        sigma, " is out of range");
      }
      budget.log_.Add(q, sigma, steps);
    }
  } catch (const nlohmann::json::exception& e) {
    return DataLoss(budget.path_, ": the DP-SGD budget file is damaged (", e.what(),
                    "); it is never reset silently: restore it, or remove it only if this data ",
                    "was never trained on");
  }
  return budget;
}

Status DpSgdBudget::Record(double q, double sigma, std::uint64_t steps) {
  privacy::CompositionLog next = log_;
  next.Add(q, sigma, steps);
  std::error_code ec;
  const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (ec) return Unavailable(dir.string(), ": cannot create the state directory: ", ec.message());
  FEDLORA_RETURN_IF_ERROR(fs::WriteFileAtomic(path_, ToJson(next, delta_)));
  log_ = std::move(next);
  return OkStatus();
}

}  // namespace fedlora::client
