#include "server/config.h"

#include <algorithm>
#include <cmath>

#include "common/crypto/sha256.h"
#include "common/lora/adapter_layout.h"
#include "common/log.h"
#include "server/strategies/weighting.h"

namespace fedlora::server {
namespace {

using config::ConfigSection;

Status ParseLora(const ConfigSection& s, wire::LoraSpec* lora) {
  FEDLORA_RETURN_IF_ERROR(s.Read("rank", &lora->rank));
  FEDLORA_RETURN_IF_ERROR(s.Read("alpha", &lora->alpha));
  FEDLORA_RETURN_IF_ERROR(s.Read("dropout", &lora->dropout));
  FEDLORA_RETURN_IF_ERROR(s.Read("rslora", &lora->rslora));
  FEDLORA_RETURN_IF_ERROR(s.Read("targets", &lora->targets));
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  if (lora->rank == 0) return InvalidArgument(s.PathOf("rank"), " must be >= 1");
  if (!(lora->alpha > 0)) return InvalidArgument(s.PathOf("alpha"), " must be > 0");
  if (lora->dropout < 0 || lora->dropout >= 1) {
    return InvalidArgument(s.PathOf("dropout"), " must be in [0, 1)");
  }
  if (lora->targets.empty()) return InvalidArgument(s.PathOf("targets"), " must not be empty");
  static const std::vector<std::string> kKnown = {"q_proj",    "k_proj",  "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
  for (const std::string& t : lora->targets) {
    if (std::find(kKnown.begin(), kKnown.end(), t) == kKnown.end()) {
      return InvalidArgument(s.PathOf("targets"), ": unknown module '", t,
                             "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                             "down_proj)");
    }
  }
  return OkStatus();
}

Status ParseTrain(const ConfigSection& s, wire::TrainSpec* train) {
  FEDLORA_RETURN_IF_ERROR(s.Read("learning_rate", &train->learning_rate));
  FEDLORA_RETURN_IF_ERROR(s.Read("warmup_steps", &train->warmup_steps));
  FEDLORA_RETURN_IF_ERROR(s.Read("local_steps", &train->local_steps));
  FEDLORA_RETURN_IF_ERROR(s.Read("local_epochs", &train->local_epochs));
  FEDLORA_RETURN_IF_ERROR(s.Read("batch_size", &train->batch_size));
  FEDLORA_RETURN_IF_ERROR(s.Read("seq_len", &train->seq_len));
  FEDLORA_RETURN_IF_ERROR(s.Read("grad_clip", &train->grad_clip));
  FEDLORA_RETURN_IF_ERROR(s.Read("weight_decay", &train->weight_decay));
  FEDLORA_RETURN_IF_ERROR(s.Read("beta1", &train->beta1));
  FEDLORA_RETURN_IF_ERROR(s.Read("beta2", &train->beta2));
  FEDLORA_RETURN_IF_ERROR(s.Read("eps", &train->eps));
  std::string upload_dtype(DTypeName(train->upload_dtype));
  FEDLORA_RETURN_IF_ERROR(s.Read("upload_dtype", &upload_dtype));
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  const std::optional<DType> dtype = ParseDType(upload_dtype);
  if (!dtype) {
    return InvalidArgument(s.PathOf("upload_dtype"), ": unknown dtype '", upload_dtype,
                           "' (expected f32, bf16, f16)");
  }
  train->upload_dtype = *dtype;
  if (!(train->learning_rate > 0)) return InvalidArgument(s.PathOf("learning_rate"), " must be > 0");
  if (train->local_steps == 0 && train->local_epochs == 0) {
    return InvalidArgument(s.PathOf("local_steps"), " and local_epochs are both 0");
  }
  if (train->batch_size == 0) return InvalidArgument(s.PathOf("batch_size"), " must be >= 1");
  if (train->seq_len < 2) return InvalidArgument(s.PathOf("seq_len"), " must be >= 2");
  if (train->grad_clip < 0) return InvalidArgument(s.PathOf("grad_clip"), " must be >= 0");
  if (train->weight_decay < 0) return InvalidArgument(s.PathOf("weight_decay"), " must be >= 0");
  if (!(train->beta1 >= 0 && train->beta1 < 1) || !(train->beta2 >= 0 && train->beta2 < 1)) {
    return InvalidArgument(s.PathOf("beta1"), "/beta2 must be in [0, 1)");
  }
  if (!(train->eps > 0)) return InvalidArgument(s.PathOf("eps"), " must be > 0");
  return OkStatus();
}

}  // namespace

Status ParseCoordinatorConfig(const ConfigSection& root, CoordinatorConfig* c) {
  FEDLORA_RETURN_IF_ERROR(root.ReadPath("state_dir", &c->state_dir));
  FEDLORA_RETURN_IF_ERROR(root.Read("rounds", &c->rounds));
  FEDLORA_RETURN_IF_ERROR(root.Read("seed", &c->seed));
  FEDLORA_RETURN_IF_ERROR(root.Read("base_model_sha256", &c->base_model_sha256));
  FEDLORA_RETURN_IF_ERROR(root.Read("keep_checkpoints", &c->keep_checkpoints));
  FEDLORA_RETURN_IF_ERROR(root.Read("log_level", &c->log_level));

  const ConfigSection transport = root.Section("transport");
  FEDLORA_RETURN_IF_ERROR(transport.Read("bind", &c->transport.bind));
  FEDLORA_RETURN_IF_ERROR(
      transport.Read("heartbeat_interval_ms", &c->transport.heartbeat_interval_ms));
  FEDLORA_RETURN_IF_ERROR(transport.Read("heartbeat_liveness", &c->transport.heartbeat_liveness));
  FEDLORA_RETURN_IF_ERROR(transport.Read("max_message_bytes", &c->transport.max_message_bytes));
  FEDLORA_RETURN_IF_ERROR(transport.Finish());

  const ConfigSection round = root.Section("round");
  FEDLORA_RETURN_IF_ERROR(round.Read("fraction", &c->round.fraction));
  FEDLORA_RETURN_IF_ERROR(round.Read("min_clients", &c->round.min_clients));
  FEDLORA_RETURN_IF_ERROR(round.Read("max_clients", &c->round.max_clients));
  FEDLORA_RETURN_IF_ERROR(round.Read("quorum", &c->round.quorum));
  FEDLORA_RETURN_IF_ERROR(round.Read("quorum_fraction", &c->round.quorum_fraction));
  FEDLORA_RETURN_IF_ERROR(round.Read("timeout_ms", &c->round.timeout_ms));
  FEDLORA_RETURN_IF_ERROR(round.Read("max_attempts", &c->round.max_attempts));
  FEDLORA_RETURN_IF_ERROR(round.Finish());

  const ConfigSection eval = root.Section("eval");
  FEDLORA_RETURN_IF_ERROR(eval.Read("enabled", &c->eval.enabled));
  FEDLORA_RETURN_IF_ERROR(eval.Read("initial", &c->eval.initial));
  FEDLORA_RETURN_IF_ERROR(eval.Read("max_batches", &c->eval.max_batches));
  FEDLORA_RETURN_IF_ERROR(eval.Read("timeout_ms", &c->eval.timeout_ms));
  FEDLORA_RETURN_IF_ERROR(eval.Finish());

  const ConfigSection strategy = root.Section("strategy");
  FEDLORA_RETURN_IF_ERROR(strategy.Read("name", &c->strategy.name));
  FEDLORA_RETURN_IF_ERROR(strategy.Read("weighting", &c->strategy.weighting));
  FEDLORA_RETURN_IF_ERROR(strategy.Finish());

  FEDLORA_RETURN_IF_ERROR(ParseLora(root.Section("lora"), &c->lora));
  FEDLORA_RETURN_IF_ERROR(ParseTrain(root.Section("train"), &c->train));
  FEDLORA_RETURN_IF_ERROR(root.Finish());

  // Ranges and cross-field rules.
  if (c->rounds == 0) return InvalidArgument(root.PathOf("rounds"), " must be >= 1");
  if (c->state_dir.empty()) return InvalidArgument(root.PathOf("state_dir"), " must not be empty");
  if (!c->base_model_sha256.empty()) {
    crypto::Digest d;
    if (!crypto::FromHex(c->base_model_sha256, &d)) {
      return InvalidArgument(root.PathOf("base_model_sha256"),
                             " must be 64 hex digits (or empty to pin the first client's)");
    }
  }
  FEDLORA_RETURN_IF_ERROR(ParseLogLevel(c->log_level).status().WithContext("log_level"));
  if (c->transport.heartbeat_interval_ms == 0 || c->transport.heartbeat_liveness == 0) {
    return InvalidArgument("transport.heartbeat_interval_ms and heartbeat_liveness must be >= 1");
  }
  if (c->transport.max_message_bytes < 4096) {
    return InvalidArgument("transport.max_message_bytes must be >= 4096");
  }
  if (!(c->round.fraction > 0 && c->round.fraction <= 1)) {
    return InvalidArgument("round.fraction must be in (0, 1]");
  }
  if (c->round.min_clients == 0) return InvalidArgument("round.min_clients must be >= 1");
  if (c->round.max_clients != 0 && c->round.max_clients < c->round.min_clients) {
    return InvalidArgument("round.max_clients (", c->round.max_clients,
                           ") is below round.min_clients (", c->round.min_clients, ")");
  }
  if (c->round.quorum == 0) return InvalidArgument("round.quorum must be >= 1");
  if (c->round.quorum > c->round.min_clients) {
    return InvalidArgument("round.quorum (", c->round.quorum, ") exceeds round.min_clients (",
                           c->round.min_clients, "): a round could never reach it");
  }
  if (c->round.quorum_fraction < 0 || c->round.quorum_fraction > 1) {
    return InvalidArgument("round.quorum_fraction must be in [0, 1]");
  }
  if (c->round.timeout_ms == 0 || c->eval.timeout_ms == 0) {
    return InvalidArgument("round.timeout_ms and eval.timeout_ms must be >= 1");
  }
  FEDLORA_RETURN_IF_ERROR(ParseWeighting(c->strategy.weighting).status().WithContext("strategy"));
  const auto names = StrategyNames();
  if (std::find(names.begin(), names.end(), c->strategy.name) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("strategy.name: unknown strategy '", c->strategy.name, "' (known: ",
                           known, ")");
  }
  c->train.seed = c->seed;
  return OkStatus();
}

Result<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path,
                                                const std::vector<std::string>& overrides) {
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc, config::ConfigDocument::Load(path, overrides));
  CoordinatorConfig config;
  FEDLORA_RETURN_IF_ERROR(ParseCoordinatorConfig(doc.Root(), &config));
  return config;
}

}  // namespace fedlora::server
