// prompt_template.h — how a Record becomes text: a prompt the model reads and a response it
// learns to write. Torch-free, tokenizer-free.
//
// Templates (exact strings; "{x}" is a field, "\n" a newline):
//
//   alpaca   (Stanford Alpaca, Taori et al. 2023; records without messages)
//     with input:    "Below is an instruction that describes a task, paired with an input that
//                     provides further context. Write a response that appropriately completes the
//                     request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n
//                     ### Response:\n"                                    (one line, no break)
//     without input: "Below is an instruction that describes a task. Write a response that
//                     appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n
//                     ### Response:\n"
//     response:      "{response}"
//
//   chatml   (the ChatML of Qwen/SmolLM chat templates; any record with a response or messages)
//     every turn before the target: "<|im_start|>{role}\n{content}<|im_end|>\n"
//     then the generation prompt:   "<|im_start|>assistant\n"
//     response:                     "{content}<|im_end|>"
//     A chat record gives one pair per assistant turn, each with the whole conversation before
//     it as prompt, so every assistant turn is trained on with an exact prompt/response boundary.
//     A record without messages is the conversation [user: {instruction} (+ "\n\n{input}" when
//     the input is not empty), assistant: {response}].
//
//   plain    (records without messages)
//     prompt:   the non-empty ones of {instruction}, {input} joined by "\n", then "\n"
//     response: "{response}"
//
//   classify (labelled records: sst2, spamassassin)
//     prompt:   "{text_prefix}{input}{label_prefix}"   sst2: "Review: {input}\nSentiment:"
//                                                      spam: "Email: {input}\nLabel:"
//     response: label_words[label]                     sst2: " negative" / " positive"
//                                                      spam: " ham" / " spam"
//
// The response carries no end-of-sequence text of its own (except ChatML's "<|im_end|>"): the
// tokenizer's EOS id is appended after tokenisation (examples.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "client/data/record_sources.h"
#include "common/status.h"

namespace fedlora::client {

enum class TemplateKind : std::uint8_t { kAlpaca, kChatml, kPlain, kClassify };
// "alpaca", "chatml", "plain", "classify"; kInvalidArgument listing them otherwise.
Result<TemplateKind> ParseTemplateKind(std::string_view name);
std::string_view TemplateKindName(TemplateKind kind);

// The template a format uses when data.template is empty: alpaca and gsm8k -> alpaca,
// chat -> chatml, sst2 and spamassassin -> classify.
TemplateKind DefaultTemplate(RecordFormat format);
// kInvalidArgument (naming both) when `kind` cannot render `format`'s records: classification
// formats need classify and classify needs them; chat needs chatml.
Status CheckTemplateFits(TemplateKind kind, RecordFormat format);

struct ClassificationTemplate {
  std::string text_prefix;               // Before the text.
  std::string label_prefix;              // After the text; the label word follows.
  std::vector<std::string> label_words;  // Index = class. Include the leading space.
  friend bool operator==(const ClassificationTemplate&, const ClassificationTemplate&) = default;
};
// sst2: {"Review: ", "\nSentiment:", {" negative", " positive"}};
// spamassassin: {"Email: ", "\nLabel:", {" ham", " spam"}}; other formats: all empty.
ClassificationTemplate DefaultClassificationTemplate(RecordFormat format);

struct PromptTemplate {
  TemplateKind kind = TemplateKind::kAlpaca;
  ClassificationTemplate classification;  // Used by kClassify only.
};

// What the model reads (prompt) and what it learns to write (response).
struct RenderedTurn {
  std::string prompt;
  std::string response;
  friend bool operator==(const RenderedTurn&, const RenderedTurn&) = default;
};

// The (prompt, response) pairs of `record`: one, or one per assistant turn for chat records
// under chatml. kInvalidArgument, naming the record's line, when the template cannot render the
// record: messages under alpaca/plain, a classify record whose label is missing or has no label
// word, a record without a response (a classification record) under alpaca/chatml/plain.
Result<std::vector<RenderedTurn>> RenderRecord(const PromptTemplate& tmpl, const Record& record);

}  // namespace fedlora::client
