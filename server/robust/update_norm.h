// update_norm.h — how far one upload moves the model, and bounding it (norm bounding, Sun et
// al. 2019 "Can you really backdoor federated learning?").
//
// The change of an upload is, tensor by tensor, what the client sent minus what its task gave it
// to start from: the task tensor of the same name (its leading slice when the client pruned the
// rank, HetLoRA), or zero when the task sent none (FLoRA's fresh factors, whose initial A is then
// part of the change; a client-held FedSA-LoRA B is never uploaded). Its norm is the L2 norm of
// all those differences as one vector. Clipping scales the change, not the upload, so the
// clipped upload is the task's starting point plus at most `bound` of movement.
//
// Torch-free: the coordinator's round engine calls it on every upload before the Ack.
#pragma once

#include "common/status.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// The L2 norm of `update`'s change against `task`. Requires an update validated against the
// task (names, dtypes, shapes within expected_upload).
double UpdateNorm(const ClientUpdate& update, const ClientTask& task);

// Replaces each uploaded tensor by reference + factor * (uploaded - reference), stored in the
// tensor's own dtype: with factor = bound / UpdateNorm, the change then has norm `bound` (up to
// the rounding of that dtype).
void ScaleChange(ClientUpdate& update, const ClientTask& task, double factor);

}  // namespace fedlora::server
