// record_sources.h — supervised datasets read into Records: the text of one training example
// before any template or tokenizer touches it. Torch-free.
//
// Formats (one loader each, plus LoadRecords to pick by RecordFormat):
//   alpaca        JSON Lines {"instruction", "input"?, "output"} (Stanford Alpaca, Dolly-style).
//   chat          JSON Lines {"messages": [{"role": system|user|assistant, "content"}]}.
//   gsm8k         JSON Lines {"question", "answer"} (openai/grade-school-math).
//   sst2          TSV with the header "sentence\tlabel", labels 0 (negative) / 1 (positive).
//   spamassassin  JSON Lines, usually gzip-compressed: {"group", "label": spam|ham, "id", "text"}.
// Every loader reads gzip-compressed and plain files alike (zlib's transparent mode). Plain-text
// corpora stay in text_dataset.h.
//
// Knows nothing about prompt templates, tokenizers or partitions. Every function is thread-safe
// (no shared state). Errors name the file and the 1-based line, and the JSON key when one is at
// fault: "train.jsonl:12: key 'answer': no '####' final-answer line".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedlora::client {

enum class ChatRole : std::uint8_t { kSystem, kUser, kAssistant };
// "system", "user", "assistant".
std::string_view ChatRoleName(ChatRole role);

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
  friend bool operator==(const ChatMessage&, const ChatMessage&) = default;
};

// One supervised example as text. Which fields are set depends on the source:
//
//   source        instruction   input        response              messages  label  group  answer
//   alpaca        instruction   input        output                -         -1     (1)    -
//   chat          -             -            -                     yes       -1     (1)    -
//   gsm8k         question      -            solution (2)          -         -1     -      final
//   sst2          -             sentence     -                     -         0/1    -      -
//   spamassassin  -             email (3)    -                     -         0/1    group  -
//
// (1) the optional string field "group" or, failing that, "category" (Dolly) of the line.
// (2) GSM8K's answer with every calculator annotation "<<...>>" deleted (they are a tool-use
//     format, not text a model should learn to write), ending in its "#### <number>" line, which
//     is kept so a model learns to state its final answer where ExtractFinalAnswer finds it.
// (3) see CleanEmailText.
// Classification records carry no response: the template verbalises `label` (prompt_template.h).
struct Record {
  std::string instruction;
  std::string input;
  std::string response;
  std::vector<ChatMessage> messages;  // Chat only; the targets are the assistant turns.
  std::int32_t label = -1;            // Class index, or -1 when unlabeled.
  std::string group;                  // Natural partition key (PartitionRecords' kGroup), or "".
  std::string answer;                 // GSM8K: the normalised final answer (NormalizeAnswer).
  std::uint64_t line = 0;             // 1-based line of the source file, for messages.
  friend bool operator==(const Record&, const Record&) = default;
};

enum class RecordFormat : std::uint8_t { kAlpaca, kChat, kGsm8k, kSst2, kSpamAssassin };
// "alpaca", "chat", "gsm8k", "sst2", "spamassassin"; kInvalidArgument listing them otherwise
// ("text" included in the hint: it is the plain-corpus format of text_dataset.h).
Result<RecordFormat> ParseRecordFormat(std::string_view name);
std::string_view RecordFormatName(RecordFormat format);
// True for the formats whose records carry a label (sst2, spamassassin).
bool IsClassificationFormat(RecordFormat format);
// The class names of a classification format, index = label: sst2 {"negative", "positive"},
// spamassassin {"ham", "spam"}; empty for the others.
std::vector<std::string> ClassNames(RecordFormat format);

struct RecordLoadOptions {
  // Stop after this many records (file order; 0 = all). For tests and quick looks; the
  // federation's seeded cap is DataConfig::max_records (examples.h).
  std::size_t limit = 0;
  // Classification inputs (the SST-2 sentence, the cleaned e-mail) are cut to at most this many
  // Unicode code points; 0 = no limit. Whole code points only, so the text stays valid UTF-8.
  std::size_t max_text_chars = 0;
};

// Each loader: kNotFound when the file cannot be opened; kDataLoss when it cannot be read to the
// end (a truncated or corrupt gzip stream); kInvalidArgument for malformed content (a line that
// is not a JSON object, a missing or mistyped key, an unknown label or role, invalid UTF-8), with
// file, line and key. Blank lines are skipped; "\r\n" line ends are accepted.
Result<std::vector<Record>> LoadAlpacaJsonl(const std::string& path,
                                            const RecordLoadOptions& options = {});
// A line must have at least one assistant turn; contents may be empty strings.
Result<std::vector<Record>> LoadChatJsonl(const std::string& path,
                                          const RecordLoadOptions& options = {});
Result<std::vector<Record>> LoadGsm8kJsonl(const std::string& path,
                                           const RecordLoadOptions& options = {});
// The header must be exactly "sentence\tlabel"; the sentence is everything before the last tab,
// trimmed of surrounding whitespace (SST-2 has a space before the tab).
Result<std::vector<Record>> LoadSst2Tsv(const std::string& path,
                                        const RecordLoadOptions& options = {});
// label "ham" -> 0, "spam" -> 1; group is required (it is the corpus' natural partition key).
Result<std::vector<Record>> LoadSpamAssassinJsonl(const std::string& path,
                                                  const RecordLoadOptions& options = {});
Result<std::vector<Record>> LoadRecords(RecordFormat format, const std::string& path,
                                        const RecordLoadOptions& options = {});

// ---- Text helpers (pure functions, exposed for tests and for the evaluator) -------------------

// GSM8K: `solution` with every "<<...>>" removed. kInvalidArgument for a "<<" without ">>".
Result<std::string> StripCalculatorAnnotations(std::string_view solution);

// Canonical form of a numeric answer, so that "1,000", "$1000", "1000." and "1000.00" compare
// equal: surrounding whitespace, ',' and '$' removed, then one trailing '.', then, when what is
// left is a plain decimal number, trailing fractional zeros (and a bare '.'). Other text is kept.
std::string NormalizeAnswer(std::string_view answer);

// The final answer stated in `text` (a GSM8K solution or a model's generation), normalised: the
// rest of the line after the last "####" when there is one, else the last number in the text
// (digits with optional sign, ',' separators and decimal point); "" when there is neither.
std::string ExtractFinalAnswer(std::string_view text);

// A raw RFC 822 message reduced to what a classifier of a small context should see:
// "Subject: <subject>\n<body>", where the subject is the (unfolded) Subject header ("" when
// absent) and the body is everything after the first blank line with each run of whitespace
// collapsed to one space and the ends trimmed. Every other header is dropped: they are long
// (Received chains) and carry corpus artefacts (spam-filter headers, dates) rather than content.
// The result is then cut to `max_chars` code points (0 = no limit).
std::string CleanEmailText(std::string_view message, std::size_t max_chars);

// The longest prefix of `text` with at most `max_chars` code points (0 = all of it).
std::string_view TruncateCodePoints(std::string_view text, std::size_t max_chars);

}  // namespace fedlora::client
