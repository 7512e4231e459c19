#include "server/offline_aggregator.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/config/yaml_config.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/lora/adapter_layout.h"
#include "common/lora/peft.h"
#include "common/safetensors.h"
#include "server/config.h"
#include "server/coordinator.h"
#include "server/strategies/make_strategy.h"

namespace fedlora::server {
namespace {

using nlohmann::ordered_json;

constexpr std::string_view kA = ".lora_A.weight";
constexpr std::string_view kB = ".lora_B.weight";
constexpr std::string_view kR = ".lora_R.weight";
constexpr std::string_view kSketchPrefix = "strategy.fslora.sketch.";

std::string ModuleOf(std::string_view name, std::string_view suffix) {
  return std::string(name.substr(0, name.size() - suffix.size()));
}

struct ClientFile {
  std::string path;
  double weight = 1;
  safetensors::File file;
  std::optional<wire::LoraSpec> peft;  // PEFT inputs: the scale their factors are at.
};

// A safetensors file, or a PEFT adapter directory converted to our names (AdapterFromPeft: every
// module at the scale of the adapter's r and lora_alpha).
Result<ClientFile> ReadInput(const std::string& path, double weight) {
  ClientFile f{path, weight, {}, std::nullopt};
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    FEDLORA_ASSIGN_OR_RETURN(lora::PeftAdapter peft, lora::ImportPeft(path));
    FEDLORA_ASSIGN_OR_RETURN(lora::LoraAdapterValue value, lora::AdapterFromPeft(peft));
    f.file.tensors = std::move(value.tensors);
    f.peft = std::move(value.spec);
    return f;
  }
  FEDLORA_ASSIGN_OR_RETURN(f.file, safetensors::Read(path));
  return f;
}

// The settings fedlora-agg understands besides the strategy section.
struct LoraSettings {
  std::uint32_t rank = 0;  // 0 = the largest client rank.
  double alpha = 0;        // 0 = the rank (scale 1).
  bool rslora = false;
};

Result<std::vector<std::uint32_t>> ParseIndexList(std::string_view text, const std::string& key) {
  std::vector<std::uint32_t> out;
  std::string cleaned;
  for (char c : text) {
    if (c != '[' && c != ']' && c != ' ') cleaned.push_back(c);
  }
  std::size_t start = 0;
  while (start < cleaned.size()) {
    std::size_t end = cleaned.find(',', start);
    if (end == std::string::npos) end = cleaned.size();
    std::uint32_t v = 0;
    const auto [ptr, ec] = std::from_chars(cleaned.data() + start, cleaned.data() + end, v);
    if (ec != std::errc() || ptr != cleaned.data() + end) {
      return InvalidArgument("--set ", key, ": expected a list of indices like [0, 3, 5]");
    }
    out.push_back(v);
    start = end + 1;
  }
  return out;
}

std::size_t Parameters(const TensorMap& tensors) {
  std::size_t n = 0;
  for (const auto& [name, t] : tensors) n += static_cast<std::size_t>(t.numel());
  return n;
}

// A wire tensor converted to `dtype` (values exact when widening).
Tensor Convert(const Tensor& t, DType dtype) {
  return t.dtype == dtype ? t : FromDoubles(dtype, t.shape, ToDoubles(t));
}

}  // namespace

Result<OfflineInput> ParseClientArgument(const std::string& argument) {
  const std::size_t colon = argument.rfind(':');
  if (colon == std::string::npos || colon + 1 == argument.size()) return OfflineInput{argument, 1};
  const std::string weight = argument.substr(colon + 1);
  double w = 0;
  const auto [ptr, ec] = std::from_chars(weight.data(), weight.data() + weight.size(), w);
  if (ec != std::errc() || ptr != weight.data() + weight.size()) {
    return OfflineInput{argument, 1};  // A colon in the path itself, not a weight.
  }
  if (!(w > 0) || !std::isfinite(w)) {
    return InvalidArgument("--client ", argument, ": the weight must be a positive sample count");
  }
  return OfflineInput{argument.substr(0, colon), w};
}

Status RunOfflineAggregation(const OfflineOptions& options) {
  if (options.clients.empty()) return InvalidArgument("give at least one --client FILE[:WEIGHT]");
  if (options.out_dir.empty()) return InvalidArgument("--out DIR is required");

  // Settings: the strategy section as in the coordinator's YAML, lora.*, and fslora sketches.
  std::vector<std::string> settings = {"strategy.name=" + options.strategy};
  std::map<std::size_t, std::vector<std::uint32_t>> sketches;
  for (const std::string& s : options.settings) {
    if (s.starts_with(kSketchPrefix)) {
      const std::size_t eq = s.find('=');
      const std::string key = s.substr(0, eq);
      std::size_t index = 0;
      const std::string_view idx = std::string_view(key).substr(kSketchPrefix.size());
      if (eq == std::string::npos ||
          std::from_chars(idx.data(), idx.data() + idx.size(), index).ec != std::errc() ||
          index >= options.clients.size()) {
        return InvalidArgument("--set ", key, ": expected ", kSketchPrefix,
                               "<client index>=[i, j, ...] with a client index below ",
                               options.clients.size());
      }
      FEDLORA_ASSIGN_OR_RETURN(sketches[index], ParseIndexList(s.substr(eq + 1), key));
    } else {
      settings.push_back(s);
    }
  }
  FEDLORA_ASSIGN_OR_RETURN(config::ConfigDocument doc,
                           config::ConfigDocument::Parse("", "fedlora-agg", settings));
  const config::ConfigSection root = doc.Root();
  StrategyConfig strategy_config;
  FEDLORA_RETURN_IF_ERROR(ParseStrategyConfig(root.Section("strategy"), &strategy_config));
  // Offline output keeps every round's correction as factors (no compaction into snapshots).
  strategy_config.corrections.compact_ratio = std::numeric_limits<double>::infinity();
  LoraSettings lora_settings;
  const config::ConfigSection lora_section = root.Section("lora");
  FEDLORA_RETURN_IF_ERROR(lora_section.Read("rank", &lora_settings.rank));
  FEDLORA_RETURN_IF_ERROR(lora_section.Read("alpha", &lora_settings.alpha));
  FEDLORA_RETURN_IF_ERROR(lora_section.Read("rslora", &lora_settings.rslora));
  FEDLORA_RETURN_IF_ERROR(lora_section.Finish());
  std::string peft_base, peft_dtype_name = "f32";
  const config::ConfigSection export_section = root.Section("export");
  FEDLORA_RETURN_IF_ERROR(export_section.Read("base_model_name_or_path", &peft_base));
  FEDLORA_RETURN_IF_ERROR(export_section.Read("dtype", &peft_dtype_name));
  FEDLORA_RETURN_IF_ERROR(export_section.Finish());
  const std::optional<DType> peft_dtype = ParseDType(peft_dtype_name);
  if (!peft_dtype) {
    return InvalidArgument("--set export.dtype: unknown dtype '", peft_dtype_name,
                           "' (expected f32, bf16, f16, f64)");
  }
  FEDLORA_RETURN_IF_ERROR(root.Finish());
  const std::string& name = strategy_config.name;

  // Inputs.
  std::vector<ClientFile> files;
  for (const OfflineInput& in : options.clients) {
    FEDLORA_ASSIGN_OR_RETURN(ClientFile f, ReadInput(in.path, in.weight));
    if (f.peft && name == "fedsb") {
      return InvalidArgument(in.path, ": fedsb aggregates each client's lora_R, which a PEFT "
                             "adapter does not carry");
    }
    files.push_back(std::move(f));
  }
  std::optional<safetensors::File> global;
  std::optional<wire::LoraSpec> global_peft;
  if (!options.global_path.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(ClientFile g, ReadInput(options.global_path, 1));
    global = std::move(g.file);
    global_peft = std::move(g.peft);
  }

  // The model layout and the ranks, from the tensors.
  const bool sb = name == "fedsb";
  std::map<std::string, wire::ModuleInfo> modules;
  std::uint32_t max_rank = 0;
  const auto learn = [&](const TensorMap& t, const std::string& source) -> Status {
    for (const auto& [tensor, value] : t) {
      const bool is_a = std::string_view(tensor).ends_with(kA);
      const bool is_b = std::string_view(tensor).ends_with(kB);
      if (!is_a && !is_b) continue;
      if (value.shape.size() != 2) {
        return InvalidArgument(source, ": tensor '", tensor, "' is not a matrix");
      }
      const std::string module = ModuleOf(tensor, is_a ? kA : kB);
      wire::ModuleInfo& m = modules[module];
      m.name = module;
      const std::int64_t d = is_a ? value.shape[1] : value.shape[0];
      std::int64_t& slot = is_a ? m.d_in : m.d_out;
      if (slot != 0 && slot != d) {
        return InvalidArgument(source, ": tensor '", tensor, "' implies ",
                               is_a ? "d_in = " : "d_out = ", d, " but another file says ", slot);
      }
      slot = d;
      max_rank = std::max<std::uint32_t>(
          max_rank, static_cast<std::uint32_t>(is_a ? value.shape[0] : value.shape[1]));
    }
    return OkStatus();
  };
  for (const ClientFile& f : files) FEDLORA_RETURN_IF_ERROR(learn(f.file.tensors, f.path));
  if (global) FEDLORA_RETURN_IF_ERROR(learn(global->tensors, options.global_path));
  if (modules.empty()) {
    return InvalidArgument("no '<module>", kA, "' tensors in the inputs");
  }
  std::set<std::string> short_names;
  ModelLayout layout;
  for (const auto& [module, m] : modules) {
    if (m.d_in == 0 || m.d_out == 0) {
      return InvalidArgument("module '", module, "' lacks its lora_A or lora_B factor");
    }
    layout.modules.push_back(m);
    short_names.insert(std::string(lora::ShortName(module)));
  }

  // PEFT inputs carry their scale. When they agree on one and lora.alpha is not set, aggregate
  // at that scale; otherwise each PEFT input's B absorbs the ratio of its scale to ours, so every
  // client's s_k B_k A_k is kept exactly.
  std::optional<double> peft_scale;
  bool peft_scales_agree = true;
  std::optional<bool> peft_rslora;
  const auto note_peft = [&](const std::optional<wire::LoraSpec>& spec) {
    if (!spec) return;
    const double s = lora::Scale(*spec);
    if (peft_scale && (*peft_scale != s || *peft_rslora != spec->rslora)) peft_scales_agree = false;
    peft_scale = s;
    peft_rslora = spec->rslora;
  };
  for (const ClientFile& f : files) note_peft(f.peft);
  note_peft(global_peft);
  StrategyContext context;
  context.lora.rank = lora_settings.rank > 0 ? lora_settings.rank : max_rank;
  context.lora.rslora = lora_settings.rslora;
  if (peft_scale && peft_scales_agree && !lora_section.Has("rslora")) {
    context.lora.rslora = *peft_rslora;
  }
  const double rank_d = static_cast<double>(context.lora.rank);
  context.lora.alpha = lora_settings.alpha > 0 ? lora_settings.alpha
                       : peft_scale && peft_scales_agree
                           ? *peft_scale * (context.lora.rslora ? std::sqrt(rank_d) : rank_d)
                           : rank_d;
  const double scale = lora::Scale(context.lora);
  const auto rescale = [&](TensorMap& tensors, const std::optional<wire::LoraSpec>& spec) {
    if (!spec) return;
    const double ratio = lora::Scale(*spec) / scale;
    if (std::abs(ratio - 1.0) <= 1e-12) return;
    for (auto& [tensor, t] : tensors) {
      if (!std::string_view(tensor).ends_with(kB)) continue;
      std::vector<double> v = ToDoubles(t);
      for (double& x : v) x *= ratio;
      t = FromDoubles(DType::kF64, t.shape, v);
    }
  };
  for (ClientFile& f : files) rescale(f.file.tensors, f.peft);
  if (global) rescale(global->tensors, global_peft);
  context.lora.targets.assign(short_names.begin(), short_names.end());
  context.train.upload_dtype = DType::kF64;
  context.state_dtype = options.fp64 ? DType::kF64 : DType::kF32;
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy,
                           MakeStrategy(strategy_config, context));
  // Binds the strategy to the layout; the state is built below from the files.
  FEDLORA_RETURN_IF_ERROR(strategy->Initialize(layout, GlobalState{}).status());

  // The state the uploads are aggregated into.
  GlobalState state;
  const TensorMap& first = files.front().file.tensors;
  if (global) {
    for (const auto& [tensor, t] : global->tensors) {
      const bool frozen_sb = sb && !std::string_view(tensor).ends_with(kR);
      (frozen_sb ? state.extra : state.adapter)[tensor] = Convert(t, DType::kF64);
    }
  } else if (name == "fslora") {
    return InvalidArgument("fslora needs --global FILE: the adapter the sketches were cut from");
  } else if (name == "hetlora") {
    for (const wire::ModuleInfo& m : layout.modules) {
      const auto r = static_cast<std::int64_t>(context.lora.rank);
      state.adapter[lora::LoraAName(m.name)] = Zeros(DType::kF64, {r, m.d_in});
      state.adapter[lora::LoraBName(m.name)] = Zeros(DType::kF64, {m.d_out, r});
    }
  } else if (name != "flora") {
    for (const auto& [tensor, t] : first) {
      const bool frozen_sb = sb && !std::string_view(tensor).ends_with(kR);
      (frozen_sb ? state.extra : state.adapter)[tensor] = Convert(t, DType::kF64);
    }
  }
  if (sb) {  // The shared frozen factors may sit in any client file.
    for (const ClientFile& f : files) {
      for (const auto& [tensor, t] : f.file.tensors) {
        if (!std::string_view(tensor).ends_with(kR) && !state.extra.contains(tensor)) {
          state.extra[tensor] = Convert(t, DType::kF64);
        }
      }
    }
  }

  // The uploads, and the tasks they answer.
  std::vector<ClientUpdate> updates;
  std::vector<ClientTask> tasks;
  for (std::size_t k = 0; k < files.size(); ++k) {
    char id[32];
    std::snprintf(id, sizeof(id), "client-%03zu", k);
    ClientUpdate u;
    u.client_id = id;
    u.num_examples = u.num_samples = static_cast<std::uint64_t>(std::llround(files[k].weight));
    if (u.num_examples == 0) u.num_examples = u.num_samples = 1;
    ClientTask task;
    task.client_id = id;
    task.lora = context.lora;
    for (const auto& [tensor, t] : files[k].file.tensors) {
      const std::string_view n(tensor);
      const bool keep = sb ? n.ends_with(kR)
                        : name == "fedsa" ? n.ends_with(kA)
                        : name == "ffa"   ? n.ends_with(kB)
                                          : n.ends_with(kA) || n.ends_with(kB);
      if (keep) u.tensors[tensor] = Convert(t, DType::kF64);
      if (n.ends_with(kA)) {
        wire::ModulePlan plan{ModuleOf(tensor, kA), static_cast<std::uint32_t>(t.shape[0]), {}};
        if (name == "fslora") {
          const auto meta = files[k].file.metadata.find("fedlora.sketch." + plan.module);
          if (meta != files[k].file.metadata.end()) {
            FEDLORA_ASSIGN_OR_RETURN(plan.sketch, ParseIndexList(meta->second, meta->first));
          } else if (sketches.contains(k)) {
            plan.sketch = sketches.at(k);
          } else {
            return InvalidArgument(files[k].path, ": fslora needs the sketch of module '",
                                   plan.module, "' (metadata fedlora.sketch.<module>, or --set ",
                                   kSketchPrefix, k, "=[...])");
          }
          if (plan.sketch.size() != static_cast<std::size_t>(t.shape[0])) {
            return InvalidArgument(files[k].path, ": sketch of '", plan.module, "' has ",
                                   plan.sketch.size(), " indices for rank ", t.shape[0]);
          }
          // What was sent: the global's sub-blocks at the sketch.
          const Tensor& ga = state.adapter.at(tensor);
          const Tensor& gb = state.adapter.at(lora::LoraBName(plan.module));
          const std::vector<double> av = ToDoubles(ga), bv = ToDoubles(gb);
          const std::int64_t r = ga.shape[0], d_in = ga.shape[1], d_out = gb.shape[0];
          const auto k_rank = static_cast<std::int64_t>(plan.sketch.size());
          std::vector<double> a_sub, b_sub(static_cast<std::size_t>(d_out * k_rank));
          for (std::uint32_t i : plan.sketch) {
            if (i >= r) return InvalidArgument("sketch index ", i, " is not below rank ", r);
            a_sub.insert(a_sub.end(), av.begin() + i * d_in, av.begin() + (i + 1) * d_in);
          }
          for (std::int64_t row = 0; row < d_out; ++row) {
            for (std::int64_t j = 0; j < k_rank; ++j) {
              b_sub[row * k_rank + j] = bv[row * r + plan.sketch[j]];
            }
          }
          task.tensors[tensor] = FromDoubles(DType::kF64, {k_rank, d_in}, a_sub);
          task.tensors[lora::LoraBName(plan.module)] =
              FromDoubles(DType::kF64, {d_out, k_rank}, b_sub);
        }
        task.plan.modules.push_back(std::move(plan));
      }
    }
    if (u.tensors.empty()) return InvalidArgument(files[k].path, ": no tensors to aggregate");
    updates.push_back(std::move(u));
    tasks.push_back(std::move(task));
  }

  FEDLORA_ASSIGN_OR_RETURN(AggregateReport report, AggregateAll(*strategy, state, 1, updates, tasks));
  std::optional<GlobalPeft> peft;
  if (!options.peft_out.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(peft, GlobalPeftOf(*strategy, state, peft_base));
    if (!peft->skip_reason.empty()) {
      return FailedPrecondition("--peft-out: ", peft->skip_reason);
    }
  }

  // Outputs.
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(options.out_dir));
  const DType out = context.state_dtype;
  TensorMap global_out;
  for (const auto& [tensor, t] : state.adapter) global_out[tensor] = Convert(t, out);
  if (sb) {
    for (const auto& [tensor, t] : state.extra) global_out[tensor] = Convert(t, out);
  }
  TensorMap correction;
  for (const CorrectionEntry& e : state.corrections.entries()) {
    for (const auto& [module, c] : e.modules) {
      correction[module + ".U"] = Convert(c.u, out);
      correction[module + ".V"] = Convert(c.v, out);
      if (name == "flora") {  // The merged update, also as a (stacked) LoRA of scale 1.
        global_out[lora::LoraBName(module)] = Convert(c.u, out);
        global_out[lora::LoraAName(module)] = Convert(c.v, out);
      }
    }
  }
  const safetensors::Metadata meta = {{"format", "pt"}, {"fedlora.strategy", name}};
  FEDLORA_RETURN_IF_ERROR(safetensors::Write(options.out_dir + "/global.safetensors", global_out, meta));
  if (!correction.empty()) {
    FEDLORA_RETURN_IF_ERROR(
        safetensors::Write(options.out_dir + "/correction.safetensors", correction, meta));
  }

  if (peft) {
    lora::PeftExportOptions export_options;
    export_options.dtype = *peft_dtype;
    export_options.corrections = std::move(peft->corrections);
    export_options.metadata = {{"fedlora.strategy", name}};
    FEDLORA_RETURN_IF_ERROR(lora::ExportPeft(options.peft_out, peft->adapter, export_options));
  }

  ordered_json summary;
  summary["strategy"] = name;
  summary["weighting"] = name == "hetlora" ? strategy_config.hetlora.weighting
                                           : strategy_config.weighting;
  summary["lora"] = {{"rank", context.lora.rank}, {"alpha", context.lora.alpha},
                     {"rslora", context.lora.rslora}, {"scale", lora::Scale(context.lora)}};
  summary["dtype"] = std::string(DTypeName(out));
  ordered_json clients = ordered_json::array();
  for (std::size_t k = 0; k < files.size(); ++k) {
    std::uint32_t rank = 0;
    for (const auto& p : tasks[k].plan.modules) rank = std::max(rank, p.rank);
    clients.push_back({{"id", updates[k].client_id}, {"file", files[k].path},
                       {"sample_count", files[k].weight},
                       {"weight", report.weights.count(updates[k].client_id)
                                      ? report.weights.at(updates[k].client_id)
                                      : 0.0},
                       {"rank", rank},
                       {"parameters", Parameters(updates[k].tensors)}});
  }
  summary["clients"] = std::move(clients);
  summary["modules"] = layout.modules.size();
  summary["parameters"] = {{"global", Parameters(global_out)},
                           {"correction", Parameters(correction)}};
  ordered_json metrics = ordered_json::object();
  for (const auto& [k, v] : report.metrics) metrics[k] = v;
  summary["metrics"] = std::move(metrics);
  if (peft) summary["peft_out"] = options.peft_out;
  FEDLORA_RETURN_IF_ERROR(fs::WriteFileAtomic(options.out_dir + "/summary.json",
                                              summary.dump(2) + "\n"));
  LogInfo(name, ": aggregated ", files.size(), " client file(s) over ", layout.modules.size(),
          " modules into ", options.out_dir);
  return OkStatus();
}

std::string OfflineAggregatorHelp() {
  return R"(Settings (--set key=value), with the names of the coordinator's YAML:
  strategy.weighting=examples|samples|uniform   client weights (default examples: the :WEIGHT
                                                sample counts; files without one count 1)
  lora.alpha=A          LoRA alpha (default: the rank, so the scale is 1; with PEFT inputs
                        that agree on a scale, that scale)
  lora.rank=R           global rank (default: the largest client rank; hetlora pads to it)
  lora.rslora=true      scale alpha/sqrt(r) instead of alpha/r
  strategy.lorafair.solver=cosine|ridge   strategy.lorafair.lambda=0.01
  strategy.lorafair.iterations=1000       strategy.lorafair.learning_rate=0.01
  strategy.hetlora.weighting=sparsity|examples|samples|uniform
  strategy.hetlora.sparsity_scope=model|module
  strategy.fslora.server_optimizer=sgd|adamw   strategy.fslora.server_learning_rate=1
  strategy.fslora.beta1=0.9  strategy.fslora.beta2=0.999  strategy.fslora.eps=1e-8
  strategy.fslora.weight_decay=0
  strategy.fslora.sketch.<client index>=[i,j,...]   the index set client <index> (0-based, in
                        --client order) trained; or metadata "fedlora.sketch.<module>" in its file.
                        fslora also needs --global (the adapter the sketches were cut from).
  export.base_model_name_or_path=NAME   written to --peft-out's adapter_config.json
  export.dtype=f32|bf16|f16|f64         dtype of --peft-out's weights (default f32)
Inputs: safetensors files with "<module>.lora_A.weight" (r x d_in), "<module>.lora_B.weight"
(d_out x r); fedsb: "<module>.lora_R.weight" (r x r) per client and the shared lora_A/lora_B in a
client file or --global. A --client or --global that is a directory is read as a PEFT LoRA
adapter (adapter_config.json + adapter_model.safetensors; no pickles); its scale lora_alpha/r is
kept exactly, and without lora.alpha the aggregation runs at the PEFT inputs' common scale.
Outputs: DIR/global.safetensors, DIR/correction.safetensors (fedex, flora: "<module>.U",
"<module>.V" with the scale folded in, W_new = W + U*V), DIR/summary.json; with --peft-out PDIR
also a PEFT adapter (load with PeftModel.from_pretrained(base, PDIR)) whose factors include the
corrections: per module B' = [s*B | U], A' = [A ; V] at scale 1 (rank r + K), so it is exact on
the pristine base; fedsb writes B*R as lora_B.)";
}

}  // namespace fedlora::server
