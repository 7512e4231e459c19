// client_ops.h — a data owner's view of its own client (ops.listen in the client's
// configuration): /metrics in Prometheus text, /status as JSON, /healthz and /readyz (ready while
// connected to the coordinator), served by common/ops/ops_server.h with the same secure defaults
// as the coordinator's (loopback unless ops.allow_remote; optional bearer token and TLS).
// Torch-free.
#pragma once

#include <memory>
#include <string>

#include "client/config.h"
#include "client/session.h"
#include "client/train/progress.h"
#include "common/ops/ops_server.h"

namespace fedlora::client {

// The metrics of `counters` (and of `training`, the latest training step, when known) for
// client `name` (fedlora_client_*).
std::string ClientMetricsText(const std::string& name, const ClientSessionCounters& counters,
                              const std::optional<TrainingProgressBoard::Entry>& training = {});
// {"name", "coordinator", "connected", "last_round", "last_train_loss", counts...,
//  "training": {"round", "step", "total_steps", "loss", "tokens_per_s", "seconds"} or null}.
std::string ClientStatusJson(const ClientConfig& config, const ClientSessionCounters& counters,
                             const std::optional<TrainingProgressBoard::Entry>& training = {});

// Starts the endpoint of `config.ops` over `session` and `board` (may be null; both must
// outlive it). Errors: those of OpsServer::Start (naming the ops.* key).
Result<std::unique_ptr<ops::OpsServer>> StartClientOps(
    const ClientConfig& config, const ClientSession& session,
    const TrainingProgressBoard* board = nullptr);

}  // namespace fedlora::client
