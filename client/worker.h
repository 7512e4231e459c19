// worker.h — what a client does with the coordinator's tasks, independent of how it talks.
//
// The session (session.h) speaks the protocol; a Worker does the work. LocalWorker
// (local_worker.h) trains with LibTorch; tests use small Workers of their own. This header is
// torch-free so the protocol code never compiles LibTorch.
#pragma once

#include <stop_token>

#include "common/status.h"
#include "common/wire/messages.h"

namespace fedlora::client {

// Thread-compatible: the session calls one method at a time, from its worker thread.
class Worker {
 public:
  virtual ~Worker() = default;

  // The Hello this worker introduces itself with: name, base-model digest, capabilities and the
  // modules its model offers for LoRA. Called once per connection.
  virtual wire::Hello Describe() const = 0;

  // Trains from `task.tensors` for one round and returns the Update to upload.
  // kInvalidArgument: the task is inconsistent with this model (unknown module, bad shape);
  // kCancelled: `stop` was requested before training finished.
  virtual Result<wire::Update> Train(const wire::RoundTask& task, std::stop_token stop) = 0;

  // Evaluates `task.tensors` on the held-out split.
  virtual Result<wire::EvalResult> Evaluate(const wire::EvalTask& task, std::stop_token stop) = 0;
};

}  // namespace fedlora::client
