#include "server/config.h"

#include <algorithm>
#include <cmath>

#include "common/crypto/sha256.h"
#include "common/log.h"
#include "common/lora/adapter_layout.h"
#include "common/secagg/quantize.h"
#include "common/wire/codec.h"
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

Status ParseStrategyConfig(const ConfigSection& s, StrategyConfig* c) {
  FEDLORA_RETURN_IF_ERROR(s.Read("name", &c->name));
  FEDLORA_RETURN_IF_ERROR(s.Read("weighting", &c->weighting));
  FEDLORA_RETURN_IF_ERROR(s.Read("max_examples_per_client", &c->max_examples_per_client));
  FEDLORA_RETURN_IF_ERROR(s.Read("max_weight_share", &c->max_weight_share));

  const ConfigSection fair = s.Section("lorafair");
  FEDLORA_RETURN_IF_ERROR(fair.Read("solver", &c->lorafair.solver));
  FEDLORA_RETURN_IF_ERROR(fair.Read("lambda", &c->lorafair.lambda));
  FEDLORA_RETURN_IF_ERROR(fair.Read("iterations", &c->lorafair.iterations));
  FEDLORA_RETURN_IF_ERROR(fair.Read("learning_rate", &c->lorafair.learning_rate));
  FEDLORA_RETURN_IF_ERROR(fair.Finish());

  const ConfigSection het = s.Section("hetlora");
  FEDLORA_RETURN_IF_ERROR(het.Read("weighting", &c->hetlora.weighting));
  FEDLORA_RETURN_IF_ERROR(het.Read("sparsity_scope", &c->hetlora.sparsity_scope));
  FEDLORA_RETURN_IF_ERROR(het.Read("gamma", &c->hetlora.gamma));
  FEDLORA_RETURN_IF_ERROR(het.Read("lambda", &c->hetlora.lambda));
  FEDLORA_RETURN_IF_ERROR(het.Read("min_rank", &c->hetlora.min_rank));
  FEDLORA_RETURN_IF_ERROR(het.Finish());

  const ConfigSection svd = s.Section("fedsvd");
  FEDLORA_RETURN_IF_ERROR(svd.Read("period", &c->fedsvd.period));
  FEDLORA_RETURN_IF_ERROR(svd.Finish());
  const ConfigSection fs = s.Section("fslora");
  FEDLORA_RETURN_IF_ERROR(fs.Read("sketch_ratio", &c->fslora.sketch_ratio));
  FEDLORA_RETURN_IF_ERROR(fs.Read("server_optimizer", &c->fslora.server_optimizer));
  FEDLORA_RETURN_IF_ERROR(fs.Read("server_learning_rate", &c->fslora.server_learning_rate));
  FEDLORA_RETURN_IF_ERROR(fs.Read("beta1", &c->fslora.beta1));
  FEDLORA_RETURN_IF_ERROR(fs.Read("beta2", &c->fslora.beta2));
  FEDLORA_RETURN_IF_ERROR(fs.Read("eps", &c->fslora.eps));
  FEDLORA_RETURN_IF_ERROR(fs.Read("weight_decay", &c->fslora.weight_decay));
  FEDLORA_RETURN_IF_ERROR(fs.Finish());

  const ConfigSection sb = s.Section("fedsb");
  FEDLORA_RETURN_IF_ERROR(sb.Read("init_client", &c->fedsb.init_client));
  FEDLORA_RETURN_IF_ERROR(sb.Read("init_samples", &c->fedsb.init_samples));
  FEDLORA_RETURN_IF_ERROR(sb.Read("init_learning_rate", &c->fedsb.init_learning_rate));
  FEDLORA_RETURN_IF_ERROR(sb.Finish());

  const ConfigSection corrections = s.Section("corrections");
  FEDLORA_RETURN_IF_ERROR(corrections.Read("compact_ratio", &c->corrections.compact_ratio));
  FEDLORA_RETURN_IF_ERROR(corrections.Finish());

  const ConfigSection policy = s.Section("rank_policy");
  FEDLORA_RETURN_IF_ERROR(policy.Read("kind", &c->rank_policy.kind));
  FEDLORA_RETURN_IF_ERROR(policy.Read("min_rank", &c->rank_policy.min_rank));
  FEDLORA_RETURN_IF_ERROR(policy.Read("min_depth", &c->rank_policy.min_depth));
  FEDLORA_RETURN_IF_ERROR(policy.Read("full_depth_speed", &c->rank_policy.full_depth_speed));
  FEDLORA_RETURN_IF_ERROR(policy.Finish());
  FEDLORA_RETURN_IF_ERROR(s.Finish());
  return ValidateStrategyConfig(*c);
}

Status ValidateStrategyConfig(const StrategyConfig& c) {
  const auto names = StrategyNames();
  if (std::find(names.begin(), names.end(), c.name) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("strategy.name: unknown strategy '", c.name, "' (known: ", known,
                           ")");
  }
  FEDLORA_RETURN_IF_ERROR(ParseWeighting(c.weighting).status().WithContext("strategy.weighting"));
  FEDLORA_RETURN_IF_ERROR(ValidateRankPolicy(c.rank_policy).WithContext("strategy"));
  if (c.max_examples_per_client == 0) {
    return InvalidArgument("strategy.max_examples_per_client must be >= 1");
  }
  if (!(c.max_weight_share > 0 && c.max_weight_share <= 1)) {
    return InvalidArgument("strategy.max_weight_share must be in (0, 1] (1 = no cap), not ",
                           c.max_weight_share);
  }
  FEDLORA_RETURN_IF_ERROR(ValidateAggregationRule(c.rule));
  FEDLORA_RETURN_IF_ERROR(CheckRuleComposes(c.name, c.rule.name));
  if (c.rank_policy.kind != "uniform" && c.name != "hetlora" && c.name != "flora" &&
      c.name != "fslora") {
    return InvalidArgument("strategy.rank_policy.kind = ", c.rank_policy.kind, ": strategy '",
                           c.name, "' trains one rank everywhere; heterogeneous ranks need "
                           "hetlora, flora or fslora");
  }
  if (c.lorafair.solver != "cosine" && c.lorafair.solver != "ridge") {
    return InvalidArgument("strategy.lorafair.solver must be cosine or ridge, not '",
                           c.lorafair.solver, "'");
  }
  if (c.lorafair.lambda < 0 || !(c.lorafair.learning_rate > 0)) {
    return InvalidArgument("strategy.lorafair: lambda must be >= 0 and learning_rate > 0");
  }
  if (c.hetlora.weighting != "sparsity") {
    FEDLORA_RETURN_IF_ERROR(
        ParseWeighting(c.hetlora.weighting).status().WithContext("strategy.hetlora.weighting"));
  }
  if (c.hetlora.sparsity_scope != "model" && c.hetlora.sparsity_scope != "module") {
    return InvalidArgument("strategy.hetlora.sparsity_scope must be model or module");
  }
  if (c.hetlora.gamma < 0 || c.hetlora.gamma >= 1 || c.hetlora.lambda < 0 ||
      c.hetlora.min_rank == 0) {
    return InvalidArgument("strategy.hetlora: gamma in [0, 1), lambda >= 0, min_rank >= 1");
  }
  if (!(c.fslora.sketch_ratio > 0 && c.fslora.sketch_ratio <= 1)) {
    return InvalidArgument("strategy.fslora.sketch_ratio must be in (0, 1]");
  }
  if (c.fslora.server_optimizer != "sgd" && c.fslora.server_optimizer != "adamw") {
    return InvalidArgument("strategy.fslora.server_optimizer must be sgd or adamw");
  }
  if (!(c.fslora.server_learning_rate > 0) || !(c.fslora.eps > 0) || c.fslora.beta1 < 0 ||
      c.fslora.beta1 >= 1 || c.fslora.beta2 < 0 || c.fslora.beta2 >= 1 ||
      c.fslora.weight_decay < 0) {
    return InvalidArgument("strategy.fslora: learning rate and eps > 0, betas in [0, 1), "
                           "weight_decay >= 0");
  }
  if (c.fedsb.init_samples == 0 || c.fedsb.init_learning_rate < 0) {
    return InvalidArgument("strategy.fedsb: init_samples >= 1 and init_learning_rate >= 0");
  }
  if (!(c.corrections.compact_ratio > 0)) {
    return InvalidArgument("strategy.corrections.compact_ratio must be > 0");
  }
  return OkStatus();
}

std::uint32_t SecureAggregationConfig::MaxClients(std::uint32_t configured_max) const {
  const std::uint64_t levels = (std::uint64_t{1} << levels_bits) - 1;
  const std::uint64_t fits = ((std::uint64_t{1} << modulus_bits) - 1) / levels;
  const auto most = static_cast<std::uint32_t>(std::min<std::uint64_t>(fits, UINT32_MAX));
  return configured_max == 0 ? most : std::min(configured_max, most);
}

namespace {

// The secure_aggregation section against the rest of the configuration: refused at start, with
// the key at fault, when a round could wrap the modulus or never unmask.
Status CheckSecureAggregation(const CoordinatorConfig& c) {
  const SecureAggregationConfig& sa = c.secure_aggregation;
  if (sa.clip < 0 || !std::isfinite(sa.clip)) {
    return InvalidArgument("secure_aggregation.clip must be finite and >= 0 (0: the strategy's)");
  }
  if (sa.modulus_bits < 2 || sa.modulus_bits > 32 || sa.levels_bits < 1 ||
      sa.levels_bits >= sa.modulus_bits) {
    return InvalidArgument("secure_aggregation: need 1 <= levels_bits (", sa.levels_bits,
                           ") < modulus_bits (", sa.modulus_bits, ") <= 32");
  }
  // The largest round this configuration can run must not wrap the modulus.
  const std::uint32_t largest = c.round.max_clients > 0 ? c.round.max_clients : c.round.min_clients;
  FEDLORA_RETURN_IF_ERROR(
      secagg::CheckQuantization({1.0, sa.levels_bits, sa.modulus_bits}, largest)
          .WithContext(c.round.max_clients > 0 ? "round.max_clients" : "round.min_clients"));
  if (sa.threshold == 1) {
    return InvalidArgument("secure_aggregation.threshold 1 would let any one client's shares ",
                           "unmask another's input; use >= 2 (0: a majority)");
  }
  if (sa.threshold > c.round.min_clients) {
    return InvalidArgument("secure_aggregation.threshold ", sa.threshold,
                           " is above round.min_clients ", c.round.min_clients, ": a round of ",
                           c.round.min_clients, " clients could never unmask its sum");
  }
  if (c.round.min_clients < 2) {
    return InvalidArgument("secure_aggregation needs round.min_clients >= 2: the sum of one ",
                           "client's input is that input");
  }
  if (sa.stage_timeout_ms == 0) {
    return InvalidArgument("secure_aggregation.stage_timeout_ms must be >= 1");
  }
  return OkStatus();
}

// The privacy section against the rest of the configuration, naming the key at fault.
Status CheckPrivacy(const CoordinatorConfig& c) {
  const PrivacyConfig& dp = c.privacy;
  if (!(dp.clip > 0) || !std::isfinite(dp.clip)) {
    return InvalidArgument("privacy.clip must be > 0: the L2 bound on each client's change");
  }
  if (!(dp.noise_multiplier >= 0) || !std::isfinite(dp.noise_multiplier)) {
    return InvalidArgument("privacy.noise_multiplier must be >= 0 (0: solved from the budget)");
  }
  if (!(dp.target_epsilon >= 0) || !std::isfinite(dp.target_epsilon)) {
    return InvalidArgument("privacy.target_epsilon must be >= 0 (0: no budget)");
  }
  if (dp.noise_multiplier == 0 && dp.target_epsilon == 0) {
    return InvalidArgument("privacy needs privacy.noise_multiplier or privacy.target_epsilon ",
                           "(or both): with neither, nothing bounds what a round releases");
  }
  if (!(dp.delta > 0 && dp.delta < 1)) return InvalidArgument("privacy.delta must be in (0, 1)");
  if (!(dp.sample_rate > 0 && dp.sample_rate <= 1)) {
    return InvalidArgument("privacy.sample_rate must be in (0, 1]");
  }
  if (!(dp.target_quantile >= 0 && dp.target_quantile < 1)) {
    return InvalidArgument("privacy.target_quantile must be in [0, 1) (0: a fixed clip)");
  }
  if (dp.target_quantile > 0) {
    if (!(dp.clip_learning_rate > 0) || !std::isfinite(dp.clip_learning_rate)) {
      return InvalidArgument("privacy.clip_learning_rate must be > 0 with adaptive clipping");
    }
    if (!(dp.count_noise_multiplier > 0) || !std::isfinite(dp.count_noise_multiplier)) {
      return InvalidArgument("privacy.count_noise_multiplier must be > 0 with adaptive clipping ",
                             "(privacy.target_quantile): the count of clients within the clip ",
                             "is released too");
    }
  }
  if (c.secure_aggregation.enabled) {
    if (dp.min_clients < 2) {
      return InvalidArgument("privacy.min_clients must be >= 2 with secure_aggregation: the ",
                             "clients add the noise, each 1/min_clients of it, and a round is ",
                             "released only when that many inputs survive");
    }
    if (dp.target_quantile > 0) {
      return InvalidArgument("privacy.target_quantile (adaptive clipping) does not work with ",
                             "secure_aggregation yet: the count of clients within the clip ",
                             "would have to be summed securely too");
    }
  } else if (dp.min_clients > 0) {
    return InvalidArgument("privacy.min_clients only applies with secure_aggregation");
  }
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
  FEDLORA_RETURN_IF_ERROR(transport.Read("chunk_bytes", &c->transport.chunk_bytes));
  FEDLORA_RETURN_IF_ERROR(transport.Finish());

  const ConfigSection security = root.Section("security");
  FEDLORA_RETURN_IF_ERROR(security.Read("mode", &c->security.mode));
  FEDLORA_RETURN_IF_ERROR(security.ReadPath("secret_key_file", &c->security.secret_key_file));
  FEDLORA_RETURN_IF_ERROR(
      security.ReadPath("authorized_clients", &c->security.authorized_clients));
  FEDLORA_RETURN_IF_ERROR(security.Read("allow_insecure", &c->security.allow_insecure));
  FEDLORA_RETURN_IF_ERROR(security.Finish());
  if (c->security.mode != "auto" && c->security.mode != "curve" && c->security.mode != "none") {
    return InvalidArgument(security.PathOf("mode"), ": '", c->security.mode,
                           "' is not auto, curve or none");
  }
  // Whether the mode fits transport.bind is decided at start (server/transport_security.h):
  // fedlora-sim sets the bind after loading.

  const ConfigSection round = root.Section("round");
  FEDLORA_RETURN_IF_ERROR(round.Read("fraction", &c->round.fraction));
  FEDLORA_RETURN_IF_ERROR(round.Read("min_clients", &c->round.min_clients));
  FEDLORA_RETURN_IF_ERROR(round.Read("wait_for_clients", &c->round.wait_for_clients));
  FEDLORA_RETURN_IF_ERROR(round.Read("max_clients", &c->round.max_clients));
  FEDLORA_RETURN_IF_ERROR(round.Read("quorum", &c->round.quorum));
  FEDLORA_RETURN_IF_ERROR(round.Read("quorum_fraction", &c->round.quorum_fraction));
  FEDLORA_RETURN_IF_ERROR(round.Read("timeout_ms", &c->round.timeout_ms));
  FEDLORA_RETURN_IF_ERROR(round.Read("max_attempts", &c->round.max_attempts));
  FEDLORA_RETURN_IF_ERROR(round.Read("retry_delay_ms", &c->round.retry_delay_ms));
  FEDLORA_RETURN_IF_ERROR(round.Finish());

  const ConfigSection eval = root.Section("eval");
  FEDLORA_RETURN_IF_ERROR(eval.Read("enabled", &c->eval.enabled));
  FEDLORA_RETURN_IF_ERROR(eval.Read("initial", &c->eval.initial));
  FEDLORA_RETURN_IF_ERROR(eval.Read("max_batches", &c->eval.max_batches));
  FEDLORA_RETURN_IF_ERROR(eval.Read("timeout_ms", &c->eval.timeout_ms));
  FEDLORA_RETURN_IF_ERROR(eval.Finish());

  const ConfigSection robust = root.Section("robust");
  FEDLORA_RETURN_IF_ERROR(robust.Read("norm_bound", &c->robust.norm_bound));
  FEDLORA_RETURN_IF_ERROR(robust.Read("norm_action", &c->robust.norm_action));
  FEDLORA_RETURN_IF_ERROR(robust.Read("rule", &c->strategy.rule.name));
  FEDLORA_RETURN_IF_ERROR(robust.Read("trim_fraction", &c->strategy.rule.trim_fraction));
  FEDLORA_RETURN_IF_ERROR(robust.Read("krum_byzantine", &c->strategy.rule.krum_byzantine));
  FEDLORA_RETURN_IF_ERROR(robust.Read("krum_select", &c->strategy.rule.krum_select));
  FEDLORA_RETURN_IF_ERROR(robust.Finish());
  if (!(c->robust.norm_bound >= 0)) {
    return InvalidArgument(robust.PathOf("norm_bound"), " must be >= 0 (0 = unbounded)");
  }
  if (c->robust.norm_action != "clip" && c->robust.norm_action != "reject") {
    return InvalidArgument(robust.PathOf("norm_action"), ": '", c->robust.norm_action,
                           "' is not clip or reject");
  }
  const ConfigSection secure = root.Section("secure_aggregation");
  SecureAggregationConfig& sa = c->secure_aggregation;
  FEDLORA_RETURN_IF_ERROR(secure.Read("enabled", &sa.enabled));
  FEDLORA_RETURN_IF_ERROR(secure.Read("clip", &sa.clip));
  FEDLORA_RETURN_IF_ERROR(secure.Read("levels_bits", &sa.levels_bits));
  FEDLORA_RETURN_IF_ERROR(secure.Read("modulus_bits", &sa.modulus_bits));
  FEDLORA_RETURN_IF_ERROR(secure.Read("threshold", &sa.threshold));
  FEDLORA_RETURN_IF_ERROR(secure.Read("degree", &sa.degree));
  FEDLORA_RETURN_IF_ERROR(secure.Read("stage_timeout_ms", &sa.stage_timeout_ms));
  FEDLORA_RETURN_IF_ERROR(secure.Finish());
  const ConfigSection private_section = root.Section("privacy");
  PrivacyConfig& dp = c->privacy;
  FEDLORA_RETURN_IF_ERROR(private_section.Read("enabled", &dp.enabled));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("clip", &dp.clip));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("noise_multiplier", &dp.noise_multiplier));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("target_epsilon", &dp.target_epsilon));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("delta", &dp.delta));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("sample_rate", &dp.sample_rate));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("target_quantile", &dp.target_quantile));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("clip_learning_rate", &dp.clip_learning_rate));
  FEDLORA_RETURN_IF_ERROR(
      private_section.Read("count_noise_multiplier", &dp.count_noise_multiplier));
  FEDLORA_RETURN_IF_ERROR(private_section.Read("min_clients", &dp.min_clients));
  FEDLORA_RETURN_IF_ERROR(private_section.Finish());
  // Read before the strategy section, whose validation checks that the rule composes with it.
  FEDLORA_RETURN_IF_ERROR(ParseStrategyConfig(root.Section("strategy"), &c->strategy));
  FEDLORA_RETURN_IF_ERROR(ops::ParseOpsConfig(root.Section("ops"), &c->ops));

  const ConfigSection exporting = root.Section("export");
  FEDLORA_RETURN_IF_ERROR(exporting.ReadPath("peft_dir", &c->export_config.peft_dir));
  FEDLORA_RETURN_IF_ERROR(
      exporting.Read("peft_every_round", &c->export_config.peft_every_round));
  FEDLORA_RETURN_IF_ERROR(exporting.Read("base_model_name_or_path",
                                         &c->export_config.base_model_name_or_path));
  std::string export_dtype(DTypeName(c->export_config.dtype));
  FEDLORA_RETURN_IF_ERROR(exporting.Read("dtype", &export_dtype));
  FEDLORA_RETURN_IF_ERROR(exporting.Finish());
  const std::optional<DType> parsed_dtype = ParseDType(export_dtype);
  if (!parsed_dtype || *parsed_dtype == DType::kF64) {
    return InvalidArgument(exporting.PathOf("dtype"), ": unknown dtype '", export_dtype,
                           "' (expected f32, bf16, f16)");
  }
  c->export_config.dtype = *parsed_dtype;

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
    c->base_model_sha256 = crypto::ToHex(d);  // Clients report lowercase hex.
  }
  FEDLORA_RETURN_IF_ERROR(ParseLogLevel(c->log_level).status().WithContext("log_level"));
  if (c->transport.heartbeat_interval_ms == 0 || c->transport.heartbeat_liveness == 0) {
    return InvalidArgument("transport.heartbeat_interval_ms and heartbeat_liveness must be >= 1");
  }
  if (c->transport.max_message_bytes < 4096) {
    return InvalidArgument("transport.max_message_bytes must be >= 4096");
  }
  FEDLORA_RETURN_IF_ERROR(
      wire::CheckChunkBytes(c->transport.chunk_bytes, c->transport.max_message_bytes));
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
  if (sa.enabled) FEDLORA_RETURN_IF_ERROR(CheckSecureAggregation(*c));
  if (dp.enabled) FEDLORA_RETURN_IF_ERROR(CheckPrivacy(*c));
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
