// update_norm.h — how far one upload moves the model, and bounding it (norm bounding, Sun et
// al. 2019 "Can you really backdoor federated learning?").
//
// The change of an upload is common/privacy/update_change.h's, against its task's tensors (FLoRA's
// fresh factors count whole; a client-held FedSA-LoRA B is never uploaded). Clipping scales the
// change, not the upload, so the clipped upload is the task's starting point plus at most `bound`
// of movement.
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
