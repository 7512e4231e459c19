#include "client/tools.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>

#include "client/data/prompt_template.h"
#include "client/data/record_sources.h"
#include "client/lora/lora_adapter.h"
#include "client/model/hf_checkpoint.h"
#include "client/model/llama.h"
#include "client/model/load_tokenizer.h"
#include "client/torch_bridge.h"
#include "client/train/device.h"
#include "client/train/trainer.h"
#include "common/lora/adapter_layout.h"
#include "common/lora/peft.h"
#include "common/safetensors.h"

namespace fedlora::client {
namespace {

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<std::shared_ptr<const LlamaModel>> LoadToolModel(const ToolModel& m) {
  FEDLORA_ASSIGN_OR_RETURN(std::shared_ptr<const LlamaModel> model, LlamaModel::Load(m.model));
  FEDLORA_ASSIGN_OR_RETURN(const at::Device device, ResolveDevice(m.device));
  if (!device.is_cpu()) {
    FEDLORA_ASSIGN_OR_RETURN(model, model->To(device));
  }
  return model;
}

Result<std::unique_ptr<TextTokenizer>> LoadToolTokenizer(const ToolModel& m,
                                                         std::int64_t vocab_size) {
  const std::string path = m.tokenizer.empty() ? m.model : m.tokenizer;
  return LoadTokenizer(path, static_cast<std::int32_t>(vocab_size));
}

// The adapter's factors in our naming with per-module rank and scale, from a PEFT directory or
// a safetensors file of "<module>.lora_A/B.weight".
struct LoadedAdapter {
  TensorMap tensors;
  std::vector<LoraModuleSpec> modules;
};

Result<LoadedAdapter> ReadAdapter(const ToolModel& m) {
  LoadedAdapter out;
  double scale_for_all = 0.0;
  if (lora::IsPeftDirectory(m.adapter)) {
    FEDLORA_ASSIGN_OR_RETURN(const lora::PeftAdapter peft, lora::ImportPeft(m.adapter));
    FEDLORA_ASSIGN_OR_RETURN(lora::LoraAdapterValue value, lora::AdapterFromPeft(peft));
    out.tensors = std::move(value.tensors);
    scale_for_all = lora::Scale(value.spec);
  } else {
    FEDLORA_ASSIGN_OR_RETURN(safetensors::File file, safetensors::Read(m.adapter));
    out.tensors = std::move(file.tensors);
  }
  for (const auto& [name, t] : out.tensors) {
    constexpr std::string_view kA = ".lora_A.weight";
    if (!std::string_view(name).ends_with(kA)) continue;
    if (t.shape.size() != 2) return InvalidArgument("adapter tensor '", name, "' is not a matrix");
    const std::string module = name.substr(0, name.size() - kA.size());
    const std::int64_t rank = t.shape[0];
    double scale = scale_for_all;
    if (scale == 0.0) scale = (m.alpha > 0 ? m.alpha : static_cast<double>(rank)) / rank;
    out.modules.push_back({.module = module, .rank = rank, .scale = scale});
  }
  if (out.modules.empty()) {
    return InvalidArgument("adapter '", m.adapter, "' holds no '<module>.lora_A.weight' tensor");
  }
  return out;
}

Result<std::unique_ptr<LoraAdapter>> BuildAdapter(const LlamaModel& model, const ToolModel& m) {
  FEDLORA_ASSIGN_OR_RETURN(const LoadedAdapter loaded, ReadAdapter(m));
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<LoraAdapter> adapter,
                           LoraAdapter::Create(model, loaded.modules, LoraOptions{}, 0));
  const Status s = adapter->Load(loaded.tensors);
  if (!s.ok()) return s.WithContext(StrCat("adapter '", m.adapter, "'"));
  return adapter;
}

}  // namespace

Status RunTokenize(const std::string& tokenizer_path, const std::string& text_file, bool special,
                   std::ostream& out) {
  FEDLORA_ASSIGN_OR_RETURN(const std::unique_ptr<TextTokenizer> tokenizer,
                           LoadTokenizer(tokenizer_path, 0));
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(text_file));
  const std::vector<TokenId> ids = tokenizer->Encode(text, special, false);
  nlohmann::json j;
  j["ids"] = ids;
  j["decoded"] = tokenizer->Decode(ids);
  out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return OkStatus();
}

Status RunLogits(const ToolModel& m, const std::string& ids_file,
                 const std::string& out_file) try {
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(ids_file));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array() || j.empty() || !j[0].is_array() || j[0].empty()) {
    return InvalidArgument("'", ids_file, "': expected a JSON list of non-empty lists of ids");
  }
  const auto rows = static_cast<std::int64_t>(j.size());
  const auto cols = static_cast<std::int64_t>(j[0].size());
  at::Tensor ids = at::empty({rows, cols}, at::kLong);
  for (std::int64_t r = 0; r < rows; ++r) {
    if (!j[r].is_array() || static_cast<std::int64_t>(j[r].size()) != cols) {
      return InvalidArgument("'", ids_file, "': row ", r, " is not a list of ", cols, " ids");
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      if (!j[r][c].is_number_integer()) {
        return InvalidArgument("'", ids_file, "': row ", r, " column ", c, " is not an integer");
      }
      ids[r][c] = j[r][c].get<std::int64_t>();
    }
  }
  FEDLORA_ASSIGN_OR_RETURN(const std::shared_ptr<const LlamaModel> model, LoadToolModel(m));
  std::unique_ptr<LoraAdapter> adapter;
  if (!m.adapter.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(adapter, BuildAdapter(*model, m));
  }
  at::NoGradGuard no_grad;
  FEDLORA_ASSIGN_OR_RETURN(const at::Tensor logits,
                           model->Forward(ids.to(model->device()), adapter.get()));
  FEDLORA_ASSIGN_OR_RETURN(Tensor wire, ToWire(logits.to(at::kFloat), DType::kF32));
  TensorMap tensors;
  tensors.emplace("logits", std::move(wire));
  return safetensors::Write(out_file, tensors);
} catch (const c10::Error& e) {
  return Internal("logits: ", e.what_without_backtrace());
}

Status RunGenerate(const ToolModel& m, const GenerateRequest& request, std::ostream& out) {
  FEDLORA_ASSIGN_OR_RETURN(const std::shared_ptr<const LlamaModel> model, LoadToolModel(m));
  FEDLORA_ASSIGN_OR_RETURN(const std::unique_ptr<TextTokenizer> tokenizer,
                           LoadToolTokenizer(m, model->config().vocab_size));
  std::unique_ptr<LoraAdapter> adapter;
  if (!m.adapter.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(adapter, BuildAdapter(*model, m));
  }
  std::string prompt = request.prompt;
  if (!request.prompt_template.empty()) {
    FEDLORA_ASSIGN_OR_RETURN(const TemplateKind kind, ParseTemplateKind(request.prompt_template));
    if (kind != TemplateKind::kAlpaca && kind != TemplateKind::kChatml) {
      return InvalidArgument("--template '", request.prompt_template,
                             "': generate supports alpaca and chatml");
    }
    Record record;
    record.instruction = request.prompt;
    record.messages = {{ChatRole::kUser, request.prompt}, {ChatRole::kAssistant, ""}};
    FEDLORA_ASSIGN_OR_RETURN(const std::vector<RenderedTurn> turns,
                             RenderRecord(PromptTemplate{.kind = kind}, record));
    prompt = turns.back().prompt;
  }
  const std::vector<TokenId> ids = tokenizer->Encode(prompt, /*bos=*/true, /*eos=*/false);
  GenerateOptions options;
  options.max_new_tokens = request.max_new_tokens;
  options.temperature = request.temperature;
  options.top_p = request.top_p;
  options.seed = request.seed;
  if (tokenizer->eos_id() >= 0) options.stop_tokens.push_back(tokenizer->eos_id());
  if (const TokenId im_end = tokenizer->PieceToId("<|im_end|>"); im_end >= 0) {
    options.stop_tokens.push_back(im_end);
  }
  // Streamed: each token's text as soon as it is chosen. Decoding the whole answer so far and
  // printing what is new keeps multi-token characters whole (a partial one decodes to a text
  // that is not an extension of what was printed, and waits for the next token).
  std::vector<TokenId> so_far;
  std::string shown;
  const auto show = [&](const std::string& text) {
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      out << text.substr(shown.size()) << std::flush;
      shown = text;
    }
  };
  options.on_token = [&](TokenId token) {
    so_far.push_back(token);
    show(tokenizer->Decode(so_far));
  };
  FEDLORA_ASSIGN_OR_RETURN(const std::vector<TokenId> generated,
                           Generate(*model, adapter.get(), ids, options));
  const std::string text = tokenizer->Decode(generated);
  show(text);
  if (text != shown) out << "\n" << text;  // Decoding rewrote an earlier piece: the whole answer.
  out << "\n";
  return OkStatus();
}

Status RunExportMerged(const ToolModel& m, const std::string& out_dir, const std::string& dtype) {
  DType type = DType::kF32;
  if (dtype == "bf16") {
    type = DType::kBF16;
  } else if (dtype == "f16") {
    type = DType::kF16;
  } else if (dtype != "f32") {
    return InvalidArgument("--dtype '", dtype, "' (expected f32, bf16 or f16)");
  }
  if (m.adapter.empty()) return InvalidArgument("export-merged needs --adapter");
  FEDLORA_ASSIGN_OR_RETURN(const std::shared_ptr<const LlamaModel> model, LoadToolModel(m));
  FEDLORA_ASSIGN_OR_RETURN(const std::unique_ptr<LoraAdapter> adapter, BuildAdapter(*model, m));
  std::vector<at::Tensor> merged(model->AdaptableModules().size());
  for (const std::string& module : adapter->ModuleNames()) {
    const std::ptrdiff_t index = model->ModuleIndex(module);
    merged[static_cast<std::size_t>(index)] = adapter->MergedWeight(*model, module);
  }
  return SaveHf(*model, out_dir, merged, type);
}

}  // namespace fedlora::client
