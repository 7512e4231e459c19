#include "server/privacy_ledger.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "common/privacy/rdp_accountant.h"

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

std::uint64_t PrivacyLedger::rounds_released() const { return released_.steps(); }

double PrivacyLedger::EpsilonSpent() const { return released_.Epsilon(config_.delta); }

double PrivacyLedger::EpsilonAfterNextRound() const {
  return released_.EpsilonWith(config_.sample_rate, sigma_, 1, config_.delta);
}

bool PrivacyLedger::NextRoundFits() const {
  return config_.target_epsilon == 0 || EpsilonAfterNextRound() <= config_.target_epsilon;
}

void PrivacyLedger::RecordRound() { released_.Add(config_.sample_rate, sigma_); }

std::string PrivacyLedger::ToJson() const {
  nlohmann::json runs = nlohmann::json::array();
  for (const privacy::CompositionLog::Run& r : released_.runs()) {
    runs.push_back({{"sample_rate", r.q}, {"noise_multiplier", r.sigma}, {"rounds", r.steps}});
  }
  return nlohmann::json{{"released", std::move(runs)}, {"delta", config_.delta}, {"clip", clip_}}
      .dump();
}

Status PrivacyLedger::Restore(const std::string& json, std::string_view what) try {
  const nlohmann::json doc = nlohmann::json::parse(json);
  privacy::CompositionLog released;
  for (const nlohmann::json& r : doc.at("released")) {
    const privacy::CompositionLog::Run run{r.at("sample_rate").get<double>(),
                                           r.at("noise_multiplier").get<double>(),
                                           r.at("rounds").get<std::uint64_t>()};
    if (!(run.q > 0 && run.q <= 1) || !(run.sigma >= 0)) {
      return DataLoss(what, ": a released run with sample rate ", run.q, " and noise multiplier ",
                      run.sigma, " is out of range");
    }
    released.Add(run.q, run.sigma, run.steps);
  }
  double clip = clip_;
  if (adaptive() && doc.contains("clip")) {  // Adaptation goes on where it was.
    clip = doc.at("clip").get<double>();
    if (!(clip > 0) || !std::isfinite(clip)) {
      return DataLoss(what, ": the adapted clip ", clip, " is out of range");
    }
  }
  released_ = std::move(released);
  clip_ = clip;
  return OkStatus();
} catch (const nlohmann::json::exception& e) {
  return DataLoss(what, ": the privacy ledger is damaged: ", e.what());
}

}  // namespace fedlora::server
