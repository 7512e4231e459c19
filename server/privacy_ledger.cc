#include "server/privacy_ledger.h"

#include <cmath>

#include <nlohmann/json.hpp>

namespace fedlora::server {

Result<PrivacyLedger> PrivacyLedger::Create(const PrivacyConfig& config, std::uint32_t rounds) {
  PrivacyLedger ledger;
  ledger.config_ = config;
  ledger.sigma_ = config.noise_multiplier;
  ledger.clip_ = config.clip;
  if (ledger.sigma_ == 0) {
    Result<double> solved =
        privacy::NoiseForBudget(config.sample_rate, rounds, config.target_epsilon, config.delta);
    if (!solved.ok()) {
      return FailedPrecondition("privacy.target_epsilon ", config.target_epsilon, " over ", rounds,
                                " rounds at privacy.sample_rate ", config.sample_rate,
                                " and delta ", config.delta, ": ", solved.status().message());
    }
    ledger.sigma_ = *solved;
    ledger.sigma_solved_ = true;
  }
  if (ledger.adaptive() && !(2 * config.count_noise_multiplier > ledger.sigma_)) {
    return FailedPrecondition("privacy.count_noise_multiplier ", config.count_noise_multiplier,
                              " must exceed half the noise multiplier ", ledger.sigma_,
                              ": the count of clients within the clip would spend the whole ",
                              "budget of a round");
  }
  return ledger;
}

double PrivacyLedger::update_noise_multiplier() const {
  if (!adaptive()) return sigma_;
  const double count = 2 * config_.count_noise_multiplier;
  return 1.0 / std::sqrt(1.0 / (sigma_ * sigma_) - 1.0 / (count * count));
}

void PrivacyLedger::AdaptClip(double within) {
  clip_ *= std::exp(-config_.clip_learning_rate * (within - config_.target_quantile));
}

double PrivacyLedger::EpsilonOf(const std::vector<Run>& runs) const {
  privacy::RdpAccountant accountant;
  for (const Run& r : runs) {
    if (!accountant.Compose(r.q, r.sigma, r.rounds).ok()) return HUGE_VAL;
  }
  Result<privacy::EpsilonAtOrder> eps = accountant.Epsilon(config_.delta);
  return eps.ok() ? eps->epsilon : HUGE_VAL;
}

std::uint64_t PrivacyLedger::rounds_released() const {
  std::uint64_t n = 0;
  for (const Run& r : runs_) n += r.rounds;
  return n;
}

double PrivacyLedger::EpsilonSpent() const { return runs_.empty() ? 0.0 : EpsilonOf(runs_); }

double PrivacyLedger::EpsilonAfterNextRound() const {
  std::vector<Run> next = runs_;
  if (!next.empty() && next.back().q == config_.sample_rate && next.back().sigma == sigma_) {
    ++next.back().rounds;
  } else {
    next.push_back({config_.sample_rate, sigma_, 1});
  }
  return EpsilonOf(next);
}

bool PrivacyLedger::NextRoundFits() const {
  return config_.target_epsilon == 0 || EpsilonAfterNextRound() <= config_.target_epsilon;
}

void PrivacyLedger::RecordRound() {
  if (!runs_.empty() && runs_.back().q == config_.sample_rate && runs_.back().sigma == sigma_) {
    ++runs_.back().rounds;
  } else {
    runs_.push_back({config_.sample_rate, sigma_, 1});
  }
}

std::string PrivacyLedger::ToJson() const {
  nlohmann::json runs = nlohmann::json::array();
  for (const Run& r : runs_) {
    runs.push_back({{"sample_rate", r.q}, {"noise_multiplier", r.sigma}, {"rounds", r.rounds}});
  }
  return nlohmann::json{{"released", std::move(runs)}, {"delta", config_.delta}, {"clip", clip_}}
      .dump();
}

Status PrivacyLedger::Restore(const std::string& json, std::string_view what) try {
  const nlohmann::json doc = nlohmann::json::parse(json);
  std::vector<Run> runs;
  for (const nlohmann::json& r : doc.at("released")) {
    Run run{r.at("sample_rate").get<double>(), r.at("noise_multiplier").get<double>(),
            r.at("rounds").get<std::uint64_t>()};
    if (!(run.q > 0 && run.q <= 1) || !(run.sigma >= 0)) {
      return DataLoss(what, ": a released run with sample rate ", run.q, " and noise multiplier ",
                      run.sigma, " is out of range");
    }
    runs.push_back(run);
  }
  double clip = clip_;
  if (adaptive() && doc.contains("clip")) {  // Adaptation goes on where it was.
    clip = doc.at("clip").get<double>();
    if (!(clip > 0) || !std::isfinite(clip)) {
      return DataLoss(what, ": the adapted clip ", clip, " is out of range");
    }
  }
  runs_ = std::move(runs);
  clip_ = clip;
  return OkStatus();
} catch (const nlohmann::json::exception& e) {
  return DataLoss(what, ": the privacy ledger is damaged: ", e.what());
}

}  // namespace fedlora::server
