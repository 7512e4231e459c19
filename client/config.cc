#include "client/config.h"

#include "client/device_spec.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "common/config/yaml_config.h"
#include "common/crypto/curve_keys.h"
#include "common/log.h"
#include "common/wire/codec.h"

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

// The data keys' values on their own; combinations that need the file (template vs. format,
// label word count, label tokens) are checked when the data is loaded (client/data/examples.h).
Status ValidateDataConfig(const DataConfig& d) {
  static const std::vector<std::string> kFormats = {"text",  "alpaca", "chat",
                                                    "gsm8k", "sst2",   "spamassassin"};
  static const std::vector<std::string> kTemplates = {"", "alpaca", "chatml", "plain",
                                                      "classify"};
  static const std::vector<std::string> kTextPartitions = {"none", "iid", "contiguous", "speaker",
                                                           "sample"};
  static const std::vector<std::string> kRecordPartitions = {"none", "iid", "dirichlet", "group",
                                                             "quantity"};
  const auto contains = [](const std::vector<std::string>& list, const std::string& value) {
    return std::find(list.begin(), list.end(), value) != list.end();
  };
  if (!contains(kFormats, d.format)) {
    return InvalidArgument("data.format: unsupported format '", d.format,
                           "' (supported: text, alpaca, chat, gsm8k, sst2, spamassassin)");
  }
  const bool text = d.format == "text";
  if (text) {
    if (!contains(kTextPartitions, d.partition)) {
      return InvalidArgument(
          "data.partition: unknown partitioner '", d.partition,
          "' for format text (expected none, iid, contiguous, speaker or sample)");
    }
    for (const auto& [key, set] : {std::pair<const char*, bool>{"template", !d.template_name.empty()},
                                   {"eval_path", !d.eval_path.empty()},
                                   {"label_words", !d.label_words.empty()}}) {
      if (set) return InvalidArgument("data.", key, " applies to record formats, not text");
    }
  } else {
    if (!contains(kRecordPartitions, d.partition)) {
      return InvalidArgument("data.partition: unknown partitioner '", d.partition, "' for format ",
                             d.format, " (expected none, iid, dirichlet, group or quantity)");
    }
    if (!contains(kTemplates, d.template_name)) {
      return InvalidArgument("data.template: unknown template '", d.template_name,
                             "' (expected alpaca, chatml, plain or classify)");
    }
  }
  if ((d.partition == "sample") != (d.sample_paragraphs != 0)) {
    return InvalidArgument(d.partition == "sample"
                               ? "data.sample_paragraphs must be >= 1 with data.partition: sample"
                               : "data.sample_paragraphs applies only to data.partition: sample");
  }
  if (d.num_partitions == 0 || d.partition_index >= d.num_partitions) {
    return InvalidArgument("data.partition_index (", d.partition_index,
                           ") must be below data.num_partitions (", d.num_partitions, ")");
  }
  const bool heldout_ok = d.eval_path.empty()
                              ? d.heldout_fraction > 0 && d.heldout_fraction < 1
                              : d.heldout_fraction >= 0 && d.heldout_fraction < 1;
  if (!heldout_ok) {
    return InvalidArgument("data.heldout_fraction must be in (0, 1) (in [0, 1) with eval_path)");
  }
  if (!(d.dirichlet_alpha > 0 && std::isfinite(d.dirichlet_alpha))) {
    return InvalidArgument("data.dirichlet_alpha must be a finite number > 0");
  }
  if (d.max_tokens == 1) return InvalidArgument("data.max_tokens must be 0 (no limit) or >= 2");
  return OkStatus();
}

Status ParseDpSgd(const config::ConfigSection& s, DpSgdConfig* dp) {
  FEDLORA_RETURN_IF_ERROR(s.Read("enabled", &dp->enabled));
  FEDLORA_RETURN_IF_ERROR(s.Read("clip", &dp->clip));
  FEDLORA_RETURN_IF_ERROR(s.Read("noise_multiplier", &dp->noise_multiplier));
  FEDLORA_RETURN_IF_ERROR(s.Read("sample_rate", &dp->sample_rate));
  FEDLORA_RETURN_IF_ERROR(s.Read("target_epsilon", &dp->target_epsilon));
  FEDLORA_RETURN_IF_ERROR(s.Read("delta", &dp->delta));
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  if (!dp->enabled) return OkStatus();
  if (!(dp->clip > 0) || !std::isfinite(dp->clip)) {
    return InvalidArgument(s.PathOf("clip"), " must be finite and > 0");
  }
  if (!(dp->noise_multiplier > 0) || !std::isfinite(dp->noise_multiplier)) {
    return InvalidArgument(s.PathOf("noise_multiplier"), " must be finite and > 0");
  }
  if (!(dp->sample_rate >= 0 && dp->sample_rate <= 1)) {
    return InvalidArgument(s.PathOf("sample_rate"),
                           " must be in [0, 1] (0: batch_size / examples)");
  }
  if (!(dp->target_epsilon > 0) || !std::isfinite(dp->target_epsilon)) {
    return InvalidArgument(s.PathOf("target_epsilon"),
                           " must be finite and > 0: DP-SGD without a budget is refused");
  }
  if (!(dp->delta > 0 && dp->delta < 1)) {
    return InvalidArgument(s.PathOf("delta"), " must be in (0, 1)");
  }
  return OkStatus();
}

}  // namespace

Status ParseClientConfig(const config::ConfigSection& root, ClientConfig* c) {
  FEDLORA_RETURN_IF_ERROR(root.Read("name", &c->name));
  FEDLORA_RETURN_IF_ERROR(root.Read("coordinator", &c->coordinator));
  FEDLORA_RETURN_IF_ERROR(root.Read("threads", &c->threads));
  FEDLORA_RETURN_IF_ERROR(root.Read("device", &c->device));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_level", &c->log_level));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_progress", &c->log_progress));
  FEDLORA_RETURN_IF_ERROR(root.Read("spill_state", &c->spill_state));
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
  FEDLORA_RETURN_IF_ERROR(data.Read("template", &c->data.template_name));
  FEDLORA_RETURN_IF_ERROR(data.Read("dirichlet_alpha", &c->data.dirichlet_alpha));
  FEDLORA_RETURN_IF_ERROR(data.Read("sample_paragraphs", &c->data.sample_paragraphs));
  FEDLORA_RETURN_IF_ERROR(data.ReadPath("eval_path", &c->data.eval_path));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_tokens", &c->data.max_tokens));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_records", &c->data.max_records));
  FEDLORA_RETURN_IF_ERROR(data.Read("label_words", &c->data.label_words));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_text_chars", &c->data.max_text_chars));
  FEDLORA_RETURN_IF_ERROR(data.ReadPath("init_path", &c->data.init_path));
  FEDLORA_RETURN_IF_ERROR(data.Read("init_from_train", &c->data.init_from_train));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_eval_generations", &c->data.max_eval_generations));
  FEDLORA_RETURN_IF_ERROR(data.Read("max_new_tokens", &c->data.max_new_tokens));
  FEDLORA_RETURN_IF_ERROR(data.Finish());

  FEDLORA_RETURN_IF_ERROR(ops::ParseOpsConfig(root.Section("ops"), &c->ops));
  const config::ConfigSection transport = root.Section("transport");
  ClientTransportConfig& t = c->transport;
  FEDLORA_RETURN_IF_ERROR(transport.Read("heartbeat_interval_ms", &t.heartbeat_interval_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("heartbeat_liveness", &t.heartbeat_liveness));
  FEDLORA_RETURN_IF_ERROR(transport.Read("reconnect_min_ms", &t.reconnect_min_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("reconnect_max_ms", &t.reconnect_max_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("hello_timeout_ms", &t.hello_timeout_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("max_message_bytes", &t.max_message_bytes));
  FEDLORA_RETURN_IF_ERROR(transport.Read("chunk_bytes", &t.chunk_bytes));
  FEDLORA_RETURN_IF_ERROR(transport.Read("max_connect_attempts", &t.max_connect_attempts));
  FEDLORA_RETURN_IF_ERROR(transport.Finish());

  const config::ConfigSection security = root.Section("security");
  FEDLORA_RETURN_IF_ERROR(security.Read("mode", &c->security.mode));
  FEDLORA_RETURN_IF_ERROR(
      security.Read("coordinator_public_key", &c->security.coordinator_public_key));
  FEDLORA_RETURN_IF_ERROR(security.ReadPath("coordinator_public_key_file",
                                            &c->security.coordinator_public_key_file));
  FEDLORA_RETURN_IF_ERROR(security.ReadPath("secret_key_file", &c->security.secret_key_file));
  FEDLORA_RETURN_IF_ERROR(security.Read("allow_insecure", &c->security.allow_insecure));
  FEDLORA_RETURN_IF_ERROR(security.Finish());
  if (c->security.mode != "auto" && c->security.mode != "curve" && c->security.mode != "none") {
    return InvalidArgument(security.PathOf("mode"), ": '", c->security.mode,
                           "' is not auto, curve or none");
  }
  if (!c->security.coordinator_public_key.empty() &&
      !c->security.coordinator_public_key_file.empty()) {
    return InvalidArgument(security.PathOf("coordinator_public_key"), " and ",
                           security.PathOf("coordinator_public_key_file"),
                           " are both set: pin the coordinator's key one way");
  }
  if (!c->security.coordinator_public_key.empty()) {
    FEDLORA_RETURN_IF_ERROR(crypto::ParseCurvePublicKey(c->security.coordinator_public_key,
                                                        security.PathOf("coordinator_public_key"))
                                .status());
  }

  const config::ConfigSection caps = root.Section("capabilities");
  FEDLORA_RETURN_IF_ERROR(caps.Read("memory_bytes", &c->capabilities.memory_bytes));
  FEDLORA_RETURN_IF_ERROR(caps.Read("max_rank", &c->capabilities.max_rank));
  FEDLORA_RETURN_IF_ERROR(caps.Read("relative_speed", &c->capabilities.relative_speed));
  FEDLORA_RETURN_IF_ERROR(caps.Finish());

  const config::ConfigSection private_section = root.Section("privacy");
  ClientPrivacyConfig& dp = c->privacy;
  FEDLORA_RETURN_IF_ERROR(private_section.Read("required", &dp.required));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("max_clip", &dp.max_clip));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("min_noise_multiplier", &dp.min_noise_multiplier));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("max_epsilon", &dp.max_epsilon));
  FEDLORA_RETURN_IF_ERROR(ParseDpSgd(private_section.Section("dp_sgd"), &dp.dp_sgd));
  FEDLORA_RETURN_IF_ERROR(private_section.Finish());
  for (const auto& [key, value] : {std::pair{"max_clip", dp.max_clip},
                                   {"min_noise_multiplier", dp.min_noise_multiplier},
                                   {"max_epsilon", dp.max_epsilon}}) {
    if (!(value >= 0) || !std::isfinite(value)) {
      return InvalidArgument(private_section.PathOf(key), " must be finite and >= 0");
    }
    if (value > 0 && !dp.required) {
      return InvalidArgument(private_section.PathOf(key), " only applies with ",
                             private_section.PathOf("required"), ": true");
    }
  }

  const config::ConfigSection faults = root.Section("faults");
  FEDLORA_RETURN_IF_ERROR(faults.Read("hold_update", &c->faults.hold_update));
  FEDLORA_RETURN_IF_ERROR(faults.Read("swap_upload_chunks", &c->faults.swap_upload_chunks));
  FEDLORA_RETURN_IF_ERROR(faults.Finish());
  FEDLORA_RETURN_IF_ERROR(root.Finish());

  if (c->name.empty()) c->name = DefaultName();
  for (std::size_t at = c->security.secret_key_file.find("{name}"); at != std::string::npos;
       at = c->security.secret_key_file.find("{name}", at)) {
    c->security.secret_key_file.replace(at, 6, c->name);
  }
  if (c->state_dir.empty()) c->state_dir = "fedlora-client-" + c->name;
  if (c->model.path.empty()) return InvalidArgument("model.path is required");
  if (c->model.format != "auto" && c->model.format != "llama2c" && c->model.format != "hf") {
    return InvalidArgument("model.format: unsupported format '", c->model.format,
                           "' (supported: auto, llama2c, hf)");
  }
  if (c->model.format == "llama2c" && c->model.tokenizer.empty()) {
    return InvalidArgument("model.tokenizer is required for a llama2c checkpoint");
  }
  if (c->data.path.empty()) return InvalidArgument("data.path is required");
  FEDLORA_RETURN_IF_ERROR(ValidateDataConfig(c->data));
  FEDLORA_RETURN_IF_ERROR(ParseDeviceSpec(c->device).status());
  if (t.heartbeat_interval_ms == 0 || t.heartbeat_liveness == 0 || t.reconnect_min_ms == 0 ||
      t.reconnect_max_ms < t.reconnect_min_ms || t.hello_timeout_ms == 0) {
    return InvalidArgument("transport: intervals must be >= 1 and reconnect_max_ms >= "
                           "reconnect_min_ms");
  }
  FEDLORA_RETURN_IF_ERROR(wire::CheckChunkBytes(t.chunk_bytes, t.max_message_bytes));
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
