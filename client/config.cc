#include "client/config.h"

#include <unistd.h>

#include <algorithm>

#include "common/config/yaml_config.h"
#include "common/log.h"

namespace fedlora::client {
namespace {

std::string DefaultName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::string name;
  for (const char* p = host; *p != '\0'; ++p) {
    const char c = *p;
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    name.push_back(ok ? c : '-');
  }
  if (name.empty()) name = "client";
  return StrCat(name.substr(0, 48), "-", getpid());
}

}  // namespace

Status ParseClientConfig(const config::ConfigSection& root, ClientConfig* c) {
  FEDLORA_RETURN_IF_ERROR(root.Read("name", &c->name));
  FEDLORA_RETURN_IF_ERROR(root.Read("coordinator", &c->coordinator));
  FEDLORA_RETURN_IF_ERROR(root.Read("threads", &c->threads));
  FEDLORA_RETURN_IF_ERROR(root.Read("device", &c->device));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_level", &c->log_level));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_progress", &c->log_progress));
  FEDLORA_RETURN_IF_ERROR(root.ReadPath("state_dir", &c->state_dir));

  const config::ConfigSection model = root.Section("model");
  FEDLORA_RETURN_IF_ERROR(model.ReadPath("path", &c->model.path));
  FEDLORA_RETURN_IF_ERROR(model.ReadPath("tokenizer", &c->model.tokenizer));
  FEDLORA_RETURN_IF_ERROR(model.Read("format", &c->model.format));
  FEDLORA_RETURN_IF_ERROR(model.Finish());

  const config::ConfigSection data = root.Section("data");
  FEDLORA_RETURN_IF_ERROR(data.ReadPath("path", &c->data.path));
  FEDLORA_RETURN_IF_ERROR(data.Read("format", &c->data.format));
  FEDLORA_RETURN_IF_ERROR(data.Read("partition", &c->data.partition));
  FEDLORA_RETURN_IF_ERROR(data.Read("num_partitions", &c->data.num_partitions));
  FEDLORA_RETURN_IF_ERROR(data.Read("partition_index", &c->data.partition_index));
  FEDLORA_RETURN_IF_ERROR(data.Read("partition_seed", &c->data.partition_seed));
  FEDLORA_RETURN_IF_ERROR(data.Read("heldout_fraction", &c->data.heldout_fraction));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_eval_windows", &c->data.max_eval_windows));
  FEDLORA_RETURN_IF_ERROR(data.ReadPath("init_path", &c->data.init_path));
  FEDLORA_RETURN_IF_ERROR(data.Read("init_from_train", &c->data.init_from_train));
  FEDLORA_RETURN_IF_ERROR(data.Finish());

  const config::ConfigSection transport = root.Section("transport");
  ClientTransportConfig& t = c->transport;
  FEDLORA_RETURN_IF_ERROR(transport.Read("heartbeat_interval_ms", &t.heartbeat_interval_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("heartbeat_liveness", &t.heartbeat_liveness));
  FEDLORA_RETURN_IF_ERROR(transport.Read("reconnect_min_ms", &t.reconnect_min_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("reconnect_max_ms", &t.reconnect_max_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("hello_timeout_ms", &t.hello_timeout_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("max_message_bytes", &t.max_message_bytes));
  FEDLORA_RETURN_IF_ERROR(transport.Read("max_connect_attempts", &t.max_connect_attempts));
  FEDLORA_RETURN_IF_ERROR(transport.Finish());

  const config::ConfigSection caps = root.Section("capabilities");
  FEDLORA_RETURN_IF_ERROR(caps.Read("memory_bytes", &c->capabilities.memory_bytes));
  FEDLORA_RETURN_IF_ERROR(caps.Read("max_rank", &c->capabilities.max_rank));
  FEDLORA_RETURN_IF_ERROR(caps.Read("relative_speed", &c->capabilities.relative_speed));
  FEDLORA_RETURN_IF_ERROR(caps.Finish());

  const config::ConfigSection faults = root.Section("faults");
  FEDLORA_RETURN_IF_ERROR(faults.Read("hold_update", &c->faults.hold_update));
  FEDLORA_RETURN_IF_ERROR(faults.Finish());
  FEDLORA_RETURN_IF_ERROR(root.Finish());

  if (c->name.empty()) c->name = DefaultName();
  if (c->state_dir.empty()) c->state_dir = "fedlora-client-" + c->name;
  if (c->model.path.empty()) return InvalidArgument("model.path is required");
  if (c->model.tokenizer.empty()) return InvalidArgument("model.tokenizer is required");
  if (c->model.format != "llama2c") {
    return InvalidArgument("model.format: unsupported format '", c->model.format,
                           "' (supported: llama2c)");
  }
  if (c->data.path.empty()) return InvalidArgument("data.path is required");
  if (c->data.format != "text") {
    return InvalidArgument("data.format: unsupported format '", c->data.format,
                           "' (supported: text)");
  }
  static const std::vector<std::string> kPartitions = {"none", "iid", "contiguous", "speaker"};
  if (std::find(kPartitions.begin(), kPartitions.end(), c->data.partition) == kPartitions.end()) {
    return InvalidArgument("data.partition: unknown partitioner '", c->data.partition,
                           "' (expected none, iid, contiguous or speaker)");
  }
  if (c->data.num_partitions == 0 || c->data.partition_index >= c->data.num_partitions) {
    return InvalidArgument("data.partition_index (", c->data.partition_index,
                           ") must be below data.num_partitions (", c->data.num_partitions, ")");
  }
  if (!(c->data.heldout_fraction > 0 && c->data.heldout_fraction < 1)) {
    return InvalidArgument("data.heldout_fraction must be in (0, 1)");
  }
  if (c->device != "cpu" && c->device != "auto" && !c->device.starts_with("cuda")) {
    return InvalidArgument("device must be cpu, auto or cuda:N, not '", c->device, "'");
  }
  if (t.heartbeat_interval_ms == 0 || t.heartbeat_liveness == 0 || t.reconnect_min_ms == 0 ||
      t.reconnect_max_ms < t.reconnect_min_ms || t.hello_timeout_ms == 0) {
    return InvalidArgument("transport: intervals must be >= 1 and reconnect_max_ms >= "
                           "reconnect_min_ms");
  }
  if (!(c->capabilities.relative_speed > 0)) {
    return InvalidArgument("capabilities.relative_speed must be > 0");
  }
  FEDLORA_RETURN_IF_ERROR(ParseLogLevel(c->log_level).status().WithContext("log_level"));
  return OkStatus();
}

Result<ClientConfig> LoadClientConfig(const std::string& path,
                                      const std::vector<std::string>& overrides) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc, config::ConfigDocument::Load(path, overrides));
  ClientConfig config;
  FEDLORA_RETURN_IF_ERROR(ParseClientConfig(doc.Root(), &config));
  return config;
}

}  // namespace fedlora::client
