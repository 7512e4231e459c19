// fake_worker.h — a Worker without a model, for tests of the client's protocol side: it returns
// the task's tensors nudged, and counts its calls.
#pragma once

#include <atomic>
#include <stop_token>
#include <string>
#include <vector>

#include "client/worker.h"
#include "tests/server/coordinator_harness.h"  // kDigest, kModules.

namespace fedlora::testing {

class FakeWorker final : public client::Worker {
 public:
  FakeWorker(std::string name, std::string digest,
             std::vector<wire::ModuleInfo> modules = kModules) {
    hello_.client_name = std::move(name);
    hello_.base_model_sha256 = std::move(digest);
    hello_.capabilities = {"cpu", 1 << 20, 0, 10, 1.0};
    hello_.modules = std::move(modules);
  }
  wire::Hello Describe() const override { return hello_; }
  Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token) override {
    ++trains;
    wire::Update u{task.round, 4, 10, {{"train_loss", 1.5}}, {}};
    for (const auto& [name, t] : task.tensors) {
      std::vector<double> v = ToDoubles(t);
      for (double& x : v) x += 0.25;
      u.tensors[name] = FromDoubles(task.train.upload_dtype, t.shape, v);
    }
    return u;
  }
  Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token) override {
    ++evals;
    return wire::EvalResult{task.round, 1.25, 100, 2, {}};
  }
  std::atomic<int> trains{0};
  std::atomic<int> evals{0};

 private:
  wire::Hello hello_;
};

}  // namespace fedlora::testing
