// upload_tasks.h — the fixed tasks upload_validation_fuzz.cc validates uploads against, shared
// with the seed generator so that its seeds are uploads these tasks accept.
//
// Two tasks from the real FedAvg strategy (server/strategies/fedavg.h) on a small two-layer
// layout: the plain one (f32 upload, 4 local steps of batch 2), and a HetLoRA-like variant
// (bf16 upload, ranks shrinkable along the rank dimension, 2 local epochs, an init budget) so
// every branch of the coordinator's ValidateUpload is reachable.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/lora/adapter_layout.h"
#include "server/strategies/fedavg.h"

namespace fedlora::fuzz {

struct UploadTasks {
  server::ClientTask plain;
  server::ClientTask shrinkable;
};

inline UploadTasks MakeUploadTasks() {
  const server::ModelLayout layout{
      std::string(64, 'a'),
      {{"model.layers.0.self_attn.q_proj", 8, 8},
       {"model.layers.0.self_attn.v_proj", 4, 8},
       {"model.layers.1.self_attn.q_proj", 8, 8},
       {"model.layers.1.self_attn.v_proj", 4, 8}}};
  server::FedAvgConfig config;
  config.lora = wire::LoraSpec{2, 4.0, 0.0, false, {"q_proj", "v_proj"}};
  config.train.local_steps = 4;
  config.train.batch_size = 2;
  config.seed = 7;
  server::FedAvg fedavg(config);
  Result<server::GlobalState> state = fedavg.Initialize(layout, std::nullopt);
  const server::ClientInfo client{"alice", {}, {}, {}};
  Result<std::vector<server::ClientTask>> tasks =
      state.ok() ? fedavg.Configure(state.value(), 1, std::span(&client, 1))
                 : Result<std::vector<server::ClientTask>>(state.status());
  if (!tasks.ok() || tasks->size() != 1) std::abort();  // The harness itself is broken.
  UploadTasks out{tasks->front(), tasks->front()};
  out.shrinkable.train.upload_dtype = DType::kBF16;
  out.shrinkable.train.local_epochs = 2;
  out.shrinkable.plan.init_samples = 64;
  for (auto& [name, expected] : out.shrinkable.expected_upload) {
    expected.spec.dtype = DType::kBF16;
    // lora_A is r x d_in (rank first), lora_B d_out x r (rank last).
    expected.shrinkable_dim = name.ends_with("lora_A.weight") ? 0 : 1;
  }
  return out;
}

}  // namespace fedlora::fuzz
