// adversary.h — hostile virtual clients, for measuring what one poisoned upload does.
//
// The `adversary` section of a simulation names clients that train honestly and then corrupt
// what they upload: `scale` sends the task's tensors plus `factor` times its real change (a
// boosted, or with a negative factor sign-flipped, update: model replacement); `random` sends the
// task's tensors plus Gaussian noise of `stddev` in place of any training. Everything else about
// them — names, data, sessions, evaluation — is an ordinary client's, so the coordinator sees
// exactly what a compromised edge node could send. The robustness tests and
// docs/security.md's figures are runs with this section.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "client/worker.h"
#include "common/config/yaml_config.h"
#include "common/status.h"

namespace fedlora::sim {

struct AdversaryConfig {
  std::vector<std::uint32_t> clients;  // Client indices (client-03 is 3); empty = none.
  std::string kind = "scale";          // scale | random
  double factor = 10.0;                // scale: multiplies the real change.
  double stddev = 1.0;                 // random: per-value noise.
  std::uint64_t seed = 0;              // random: with the client index and round.
};

// Reads the `adversary` section. Errors name the key.
Status ParseAdversaryConfig(const config::ConfigSection& section, AdversaryConfig* out);

// Forwards to `inner` and corrupts each Update as `config` says; evaluation is left honest.
// Thread-compatible, like any Worker.
class AdversarialWorker final : public client::Worker {
 public:
  AdversarialWorker(std::unique_ptr<client::Worker> inner, std::uint32_t index,
                    AdversaryConfig config)
      : inner_(std::move(inner)), index_(index), config_(std::move(config)) {}

  wire::Hello Describe() const override { return inner_->Describe(); }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) override;
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) override {
    return inner_->Evaluate(task, std::move(stop));
  }

 private:
  std::unique_ptr<client::Worker> inner_;
  std::uint32_t index_;
  AdversaryConfig config_;
};

}  // namespace fedlora::sim
