#include "client/data/prompt_template.h"

namespace fedlora::client {
namespace {

constexpr std::string_view kAlpacaWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";
constexpr std::string_view kAlpacaNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n";

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

void AppendChatmlTurn(std::string_view role, std::string_view content, std::string* out) {
  out->append(kImStart).append(role).append("\n").append(content).append(kImEnd).append("\n");
}

Status RecordError(const Record& record, std::string_view what) {
  return InvalidArgument("record at line ", record.line, ": ", what);
}

}  // namespace

Result<TemplateKind> ParseTemplateKind(std::string_view name) {
  if (name == "alpaca") return TemplateKind::kAlpaca;
  if (name == "chatml") return TemplateKind::kChatml;
  if (name == "plain") return TemplateKind::kPlain;
  if (name == "classify") return TemplateKind::kClassify;
  return InvalidArgument("unknown template '", name,
                         "' (expected one of: alpaca, chatml, plain, classify)");
}

std::string_view TemplateKindName(TemplateKind kind) {
  switch (kind) {
    case TemplateKind::kAlpaca:
      return "alpaca";
    case TemplateKind::kChatml:
      return "chatml";
    case TemplateKind::kPlain:
      return "plain";
    case TemplateKind::kClassify:
      return "classify";
  }
  return "invalid";
}

TemplateKind DefaultTemplate(RecordFormat format) {
  switch (format) {
    case RecordFormat::kChat:
      return TemplateKind::kChatml;
    case RecordFormat::kSst2:
    case RecordFormat::kSpamAssassin:
      return TemplateKind::kClassify;
    case RecordFormat::kAlpaca:
    case RecordFormat::kGsm8k:
      break;
  }
  return TemplateKind::kAlpaca;
}

Status CheckTemplateFits(TemplateKind kind, RecordFormat format) {
  const bool classification = IsClassificationFormat(format);
  const bool ok = classification                  ? kind == TemplateKind::kClassify
                  : format == RecordFormat::kChat ? kind == TemplateKind::kChatml
                                                  : kind != TemplateKind::kClassify;
  if (ok) return OkStatus();
  return InvalidArgument("template '", TemplateKindName(kind), "' cannot render format '",
                         RecordFormatName(format), "' (hint: use template ",
                         TemplateKindName(DefaultTemplate(format)), ")");
}

ClassificationTemplate DefaultClassificationTemplate(RecordFormat format) {
  switch (format) {
    case RecordFormat::kSst2:
      return {"Review: ", "\nSentiment:", {" negative", " positive"}};
    case RecordFormat::kSpamAssassin:
      return {"Email: ", "\nLabel:", {" ham", " spam"}};
    default:
      return {};
  }
}

Result<std::vector<RenderedTurn>> RenderRecord(const PromptTemplate& tmpl, const Record& record) {
  if (tmpl.kind == TemplateKind::kClassify) {
    const std::vector<std::string>& words = tmpl.classification.label_words;
    if (record.label < 0) return RecordError(record, "template classify needs a label");
    if (static_cast<std::size_t>(record.label) >= words.size()) {
      return RecordError(record, StrCat("label ", record.label, " has no label word (",
                                        words.size(), " label words)"));
    }
    return std::vector<RenderedTurn>{
        {StrCat(tmpl.classification.text_prefix, record.input, tmpl.classification.label_prefix),
         words[static_cast<std::size_t>(record.label)]}};
  }

  if (tmpl.kind == TemplateKind::kChatml) {
    std::vector<ChatMessage> synthesized;
    const std::vector<ChatMessage>* messages = &record.messages;
    if (record.messages.empty()) {
      if (record.label >= 0 && record.response.empty()) {
        return RecordError(record, "a classification record needs template classify");
      }
      std::string user = record.instruction;
      if (!record.input.empty()) user.append("\n\n").append(record.input);
      synthesized = {{ChatRole::kUser, std::move(user)}, {ChatRole::kAssistant, record.response}};
      messages = &synthesized;
    }
    std::vector<RenderedTurn> turns;
    std::string history;
    for (const ChatMessage& m : *messages) {
      if (m.role == ChatRole::kAssistant) {
        turns.push_back({StrCat(history, kImStart, "assistant\n"), StrCat(m.content, kImEnd)});
      }
      AppendChatmlTurn(ChatRoleName(m.role), m.content, &history);
    }
    if (turns.empty()) return RecordError(record, "no assistant turn");
    return turns;
  }

  // alpaca and plain render single-turn records only.
  if (!record.messages.empty()) {
    return RecordError(record, StrCat("template ", TemplateKindName(tmpl.kind),
                                      " cannot render a chat record (hint: template chatml)"));
  }
  if (record.label >= 0 && record.response.empty()) {
    return RecordError(record, "a classification record needs template classify");
  }
  std::string prompt;
  if (tmpl.kind == TemplateKind::kAlpaca) {
    if (record.input.empty()) {
      prompt = StrCat(kAlpacaNoInput, record.instruction, "\n\n### Response:\n");
    } else {
      prompt = StrCat(kAlpacaWithInput, record.instruction, "\n\n### Input:\n", record.input,
                      "\n\n### Response:\n");
    }
  } else {
    prompt = record.instruction;
    if (!record.input.empty()) {
      if (!prompt.empty()) prompt.push_back('\n');
      prompt.append(record.input);
    }
    prompt.push_back('\n');
  }
  return std::vector<RenderedTurn>{{std::move(prompt), record.response}};
}

}  // namespace fedlora::client
