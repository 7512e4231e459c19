#include "server/robust/update_norm.h"

#include "common/privacy/update_change.h"

namespace fedlora::server {

double UpdateNorm(const ClientUpdate& update, const ClientTask& task) {
  return privacy::ChangeNorm(update.tensors, task.tensors);
}

void ScaleChange(ClientUpdate& update, const ClientTask& task, double factor) {
  privacy::ScaleChange(update.tensors, task.tensors, factor);
}

}  // namespace fedlora::server
