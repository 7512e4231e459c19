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
#include "common/ops/ops_server.h"

namespace fedlora::client {

// The metrics of `counters` for client `name` (fedlora_client_*).
std::string ClientMetricsText(const std::string& name, const ClientSessionCounters& counters);
// {"name", "coordinator", "connected", "last_round", "last_train_loss", counts...}.
std::string ClientStatusJson(const ClientConfig& config, const ClientSessionCounters& counters);

// Starts the endpoint of `config.ops` over `session` (which must outlive it). Errors: those of
// OpsServer::Start (naming the ops.* key).
Result<std::unique_ptr<ops::OpsServer>> StartClientOps(const ClientConfig& config,
                                                       const ClientSession& session);

}  // namespace fedlora::client
