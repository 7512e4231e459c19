#include "client/data/record_sources.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "client/data/text_dataset.h"

namespace fedlora::client {
namespace {

using Json = nlohmann::json;

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<gzFile_s, GzCloser>;

// Lines of a gzip-compressed or plain file (zlib reads plain files through unchanged), without
// their "\n" or "\r\n". Reads in 64 KiB chunks, so a limit stops decompression early.
class LineReader {
 public:
  static Result<LineReader> Open(const std::string& path) {
    GzPtr file(gzopen(path.c_str(), "rb"));
    if (!file) return NotFound("cannot open data file '", path, "': ", std::strerror(errno));
    gzbuffer(file.get(), 1 << 17);
    return LineReader(path, std::move(file));
  }

  // True with the next line in `*line`; false at a clean end of file. kDataLoss when zlib
  // reports an error (a truncated or corrupt stream), naming the line it stopped in.
  Result<bool> Next(std::string* line) {
    for (;;) {
      const std::size_t newline = buffer_.find('\n', pos_);
      if (newline != std::string::npos) {
        TakeLine(newline, newline + 1, line);
        return true;
      }
      if (eof_) {
        if (pos_ >= buffer_.size()) return false;
        TakeLine(buffer_.size(), buffer_.size(), line);
        return true;
      }
      FEDLORA_RETURN_IF_ERROR(Fill());
    }
  }

  std::uint64_t line_number() const { return line_number_; }

 private:
  LineReader(std::string path, GzPtr file) : path_(std::move(path)), file_(std::move(file)) {}

  void TakeLine(std::size_t end, std::size_t next, std::string* line) {
    std::size_t stop = end;
    if (stop > pos_ && buffer_[stop - 1] == '\r') --stop;
    line->assign(buffer_, pos_, stop - pos_);
    pos_ = next;
    ++line_number_;
  }

  Status Fill() {
    if (pos_ > 0) {
      buffer_.erase(0, pos_);
      pos_ = 0;
    }
    char chunk[1 << 16];
    const int n = gzread(file_.get(), chunk, sizeof chunk);
    int err = Z_OK;
    const char* message = gzerror(file_.get(), &err);
    if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
      return DataLoss("cannot read data file '", path_, "' after line ", line_number_, ": ",
                      err == Z_ERRNO ? std::strerror(errno) : message,
                      " (hint: the file is truncated or corrupt)");
    }
    if (n == 0) eof_ = true;
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return OkStatus();
  }

  std::string path_;
  GzPtr file_;
  std::string buffer_;
  std::size_t pos_ = 0;
  bool eof_ = false;
  std::uint64_t line_number_ = 0;
};

bool IsBlank(std::string_view s) { return s.find_first_not_of(" \t\r") == std::string_view::npos; }

std::string_view Trim(std::string_view s) {
  const std::size_t b = s.find_first_not_of(" \t\r\n\f\v");
  if (b == std::string_view::npos) return {};
  const std::size_t e = s.find_last_not_of(" \t\r\n\f\v");
  return s.substr(b, e - b + 1);
}

// Where a line came from, for messages: "file:line".
struct Where {
  const std::string& path;
  std::uint64_t line;
};

template <typename... Args>
Status BadLine(const Where& where, const Args&... args) {
  return InvalidArgument(where.path, ":", where.line, ": ", args...);
}

// nlohmann/json reports by throwing; its exceptions stop here.
Result<Json> ParseObject(std::string_view text, const Where& where) {
  const std::string_view hint = Trim(text).starts_with('[')
                                    ? " (hint: a JSON array file must be converted to JSON Lines)"
                                    : "";
  Json json;
  try {
    json = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    // The parser sees one line, so its "line 1" would contradict ours: keep only the column.
    std::string reason = e.what();
    if (const std::size_t at = reason.find("at line 1, "); at != std::string::npos) {
      reason.replace(at, 11, "at ");
    }
    return BadLine(where, "not a JSON object: ", reason, hint);
  }
  if (!json.is_object()) {
    return BadLine(where, "expected a JSON object, got a JSON ", json.type_name(), hint);
  }
  return json;
}

// The string at `key`: std::nullopt when absent or null and !required.
Result<std::optional<std::string>> StringField(const Json& object, const char* key, bool required,
                                               const Where& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (required) return BadLine(where, "key '", key, "': missing");
    return std::optional<std::string>();
  }
  if (!it->is_string()) {
    return BadLine(where, "key '", key, "': expected a string, got a JSON ", it->type_name());
  }
  return std::optional<std::string>(it->get<std::string>());
}

Result<std::string> RequiredString(const Json& object, const char* key, const Where& where) {
  FEDLORA_ASSIGN_OR_RETURN(std::optional<std::string> value, StringField(object, key, true, where));
  return std::move(*value);
}

// The optional natural partition key of instruction data: "group", else "category".
Result<std::string> OptionalGroup(const Json& object, const Where& where) {
  for (const char* key : {"group", "category"}) {
    FEDLORA_ASSIGN_OR_RETURN(std::optional<std::string> value,
                             StringField(object, key, false, where));
    if (value) return std::move(*value);
  }
  return std::string();
}

// Reads every non-blank line of `path` through `parse_line` until `options.limit` records.
template <typename ParseLine>
Result<std::vector<Record>> ReadRecords(const std::string& path, const RecordLoadOptions& options,
                                        ParseLine parse_line) {
  FEDLORA_ASSIGN_OR_RETURN(LineReader reader, LineReader::Open(path));
  std::vector<Record> records;
  std::string line;
  for (;;) {
    if (options.limit != 0 && records.size() >= options.limit) break;
    FEDLORA_ASSIGN_OR_RETURN(const bool more, reader.Next(&line));
    if (!more) break;
    if (IsBlank(line)) continue;
    const Where where{path, reader.line_number()};
    FEDLORA_ASSIGN_OR_RETURN(std::optional<Record> record, parse_line(line, where));
    if (!record) continue;  // A line that holds no record (a header).
    record->line = where.line;
    records.push_back(std::move(*record));
  }
  return records;
}

using MaybeRecord = Result<std::optional<Record>>;

MaybeRecord ParseAlpacaLine(std::string_view line, const Where& where) {
  FEDLORA_ASSIGN_OR_RETURN(const Json json, ParseObject(line, where));
  Record r;
  FEDLORA_ASSIGN_OR_RETURN(r.instruction, RequiredString(json, "instruction", where));
  FEDLORA_ASSIGN_OR_RETURN(std::optional<std::string> input,
                           StringField(json, "input", false, where));
  r.input = input.value_or("");
  FEDLORA_ASSIGN_OR_RETURN(r.response, RequiredString(json, "output", where));
  FEDLORA_ASSIGN_OR_RETURN(r.group, OptionalGroup(json, where));
  return std::optional<Record>(std::move(r));
}

MaybeRecord ParseChatLine(std::string_view line, const Where& where) {
  FEDLORA_ASSIGN_OR_RETURN(const Json json, ParseObject(line, where));
  const auto messages = json.find("messages");
  if (messages == json.end()) return BadLine(where, "key 'messages': missing");
  if (!messages->is_array() || messages->empty()) {
    return BadLine(where, "key 'messages': expected a non-empty array of {role, content}");
  }
  Record r;
  bool has_assistant = false;
  for (std::size_t i = 0; i < messages->size(); ++i) {
    const Json& m = (*messages)[i];
    const std::string key = StrCat("messages[", i, "]");
    if (!m.is_object()) return BadLine(where, "key '", key, "': expected an object");
    std::string fields[2];  // role, content
    for (int f = 0; f < 2; ++f) {
      const char* name = f == 0 ? "role" : "content";
      const auto it = m.find(name);
      if (it == m.end() || !it->is_string()) {
        return BadLine(where, "key '", key, ".", name,
                       "': ", it == m.end() ? "missing" : "expected a string");
      }
      fields[f] = it->get<std::string>();
    }
    const std::string& role = fields[0];
    ChatMessage message;
    if (role == "system") {
      message.role = ChatRole::kSystem;
    } else if (role == "user") {
      message.role = ChatRole::kUser;
    } else if (role == "assistant") {
      message.role = ChatRole::kAssistant;
      has_assistant = true;
    } else {
      return BadLine(where, "key '", key, ".role': unknown role '", role,
                     "' (expected system, user or assistant)");
    }
    message.content = std::move(fields[1]);
    r.messages.push_back(std::move(message));
  }
  if (!has_assistant) {
    return BadLine(where, "key 'messages': no assistant turn (nothing to train on)");
  }
  FEDLORA_ASSIGN_OR_RETURN(r.group, OptionalGroup(json, where));
  return std::optional<Record>(std::move(r));
}

MaybeRecord ParseGsm8kLine(std::string_view line, const Where& where) {
  FEDLORA_ASSIGN_OR_RETURN(const Json json, ParseObject(line, where));
  Record r;
  FEDLORA_ASSIGN_OR_RETURN(r.instruction, RequiredString(json, "question", where));
  FEDLORA_ASSIGN_OR_RETURN(const std::string answer, RequiredString(json, "answer", where));
  const std::size_t marker = answer.rfind("####");
  if (marker == std::string::npos) {
    return BadLine(where, "key 'answer': no '#### <final answer>' line");
  }
  std::string_view final_line = std::string_view(answer).substr(marker + 4);
  final_line = final_line.substr(0, final_line.find('\n'));
  r.answer = NormalizeAnswer(final_line);
  if (r.answer.empty()) return BadLine(where, "key 'answer': empty final answer after '####'");
  Result<std::string> stripped = StripCalculatorAnnotations(answer);
  if (!stripped.ok()) return BadLine(where, "key 'answer': ", stripped.status().message());
  r.response = std::move(stripped).value();
  return std::optional<Record>(std::move(r));
}

}  // namespace

std::string_view ChatRoleName(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
  }
  return "invalid";
}

Result<RecordFormat> ParseRecordFormat(std::string_view name) {
  if (name == "alpaca") return RecordFormat::kAlpaca;
  if (name == "chat") return RecordFormat::kChat;
  if (name == "gsm8k") return RecordFormat::kGsm8k;
  if (name == "sst2") return RecordFormat::kSst2;
  if (name == "spamassassin") return RecordFormat::kSpamAssassin;
  return InvalidArgument("unknown record format '", name,
                         "' (expected one of: alpaca, chat, gsm8k, sst2, spamassassin; "
                         "plain corpora use format text)");
}

std::string_view RecordFormatName(RecordFormat format) {
  switch (format) {
    case RecordFormat::kAlpaca:
      return "alpaca";
    case RecordFormat::kChat:
      return "chat";
    case RecordFormat::kGsm8k:
      return "gsm8k";
    case RecordFormat::kSst2:
      return "sst2";
    case RecordFormat::kSpamAssassin:
      return "spamassassin";
  }
  return "invalid";
}

bool IsClassificationFormat(RecordFormat format) {
  return format == RecordFormat::kSst2 || format == RecordFormat::kSpamAssassin;
}

std::vector<std::string> ClassNames(RecordFormat format) {
  switch (format) {
    case RecordFormat::kSst2:
      return {"negative", "positive"};
    case RecordFormat::kSpamAssassin:
      return {"ham", "spam"};
    default:
      return {};
  }
}

Result<std::vector<Record>> LoadAlpacaJsonl(const std::string& path,
                                            const RecordLoadOptions& options) {
  return ReadRecords(path, options, ParseAlpacaLine);
}

Result<std::vector<Record>> LoadChatJsonl(const std::string& path,
                                          const RecordLoadOptions& options) {
  return ReadRecords(path, options, ParseChatLine);
}

Result<std::vector<Record>> LoadGsm8kJsonl(const std::string& path,
                                           const RecordLoadOptions& options) {
  return ReadRecords(path, options, ParseGsm8kLine);
}

Result<std::vector<Record>> LoadSst2Tsv(const std::string& path, const RecordLoadOptions& options) {
  bool header_seen = false;
  return ReadRecords(path, options, [&](std::string_view line, const Where& where) -> MaybeRecord {
    if (const std::size_t bad = FirstInvalidUtf8(line); bad != std::string_view::npos) {
      return BadLine(where, "invalid UTF-8 at column ", bad + 1);
    }
    if (!header_seen) {
      header_seen = true;
      if (line != "sentence\tlabel") {
        return BadLine(where, "expected the header 'sentence<TAB>label', got '",
                       TruncateCodePoints(line, 60), "'");
      }
      return std::optional<Record>();
    }
    const std::size_t tab = line.rfind('\t');
    if (tab == std::string_view::npos) {
      return BadLine(where, "expected 'sentence<TAB>label' (no tab)");
    }
    const std::string_view label = Trim(line.substr(tab + 1));
    Record r;
    if (label == "0") {
      r.label = 0;
    } else if (label == "1") {
      r.label = 1;
    } else {
      return BadLine(where, "column 'label': unknown label '", label, "' (expected 0 or 1)");
    }
    const std::string_view sentence = Trim(line.substr(0, tab));
    if (sentence.empty()) return BadLine(where, "column 'sentence': empty");
    r.input = std::string(TruncateCodePoints(sentence, options.max_text_chars));
    return std::optional<Record>(std::move(r));
  });
}

Result<std::vector<Record>> LoadSpamAssassinJsonl(const std::string& path,
                                                  const RecordLoadOptions& options) {
  return ReadRecords(path, options, [&](std::string_view line, const Where& where) -> MaybeRecord {
    FEDLORA_ASSIGN_OR_RETURN(const Json json, ParseObject(line, where));
    Record r;
    FEDLORA_ASSIGN_OR_RETURN(r.group, RequiredString(json, "group", where));
    FEDLORA_ASSIGN_OR_RETURN(const std::string label, RequiredString(json, "label", where));
    if (label == "ham") {
      r.label = 0;
    } else if (label == "spam") {
      r.label = 1;
    } else {
      return BadLine(where, "key 'label': unknown label '", label, "' (expected ham or spam)");
    }
    FEDLORA_ASSIGN_OR_RETURN(const std::string text, RequiredString(json, "text", where));
    r.input = CleanEmailText(text, options.max_text_chars);
    return std::optional<Record>(std::move(r));
  });
}

Result<std::vector<Record>> LoadRecords(RecordFormat format, const std::string& path,
                                        const RecordLoadOptions& options) {
  switch (format) {
    case RecordFormat::kAlpaca:
      return LoadAlpacaJsonl(path, options);
    case RecordFormat::kChat:
      return LoadChatJsonl(path, options);
    case RecordFormat::kGsm8k:
      return LoadGsm8kJsonl(path, options);
    case RecordFormat::kSst2:
      return LoadSst2Tsv(path, options);
    case RecordFormat::kSpamAssassin:
      return LoadSpamAssassinJsonl(path, options);
  }
  return InvalidArgument("invalid record format");
}

Result<std::string> StripCalculatorAnnotations(std::string_view solution) {
  std::string out;
  out.reserve(solution.size());
  std::size_t pos = 0;
  for (;;) {
    const std::size_t open = solution.find("<<", pos);
    if (open == std::string_view::npos) break;
    const std::size_t close = solution.find(">>", open + 2);
    if (close == std::string_view::npos) {
      return InvalidArgument("unterminated calculator annotation '<<' at offset ", open);
    }
    out.append(solution.substr(pos, open - pos));
    pos = close + 2;
  }
  out.append(solution.substr(pos));
  return out;
}

std::string NormalizeAnswer(std::string_view answer) {
  std::string s;
  for (char c : Trim(answer)) {
    if (c != ',' && c != '$') s.push_back(c);
  }
  s = std::string(Trim(s));
  if (!s.empty() && s.back() == '.') s.pop_back();
  // A plain decimal number: drop a leading '+', trailing fractional zeros and a bare '.'.
  std::size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  const std::size_t digits_begin = i;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  bool numeric = i > digits_begin;
  std::size_t dot = std::string::npos;  // Position of the decimal point, if any.
  if (numeric && i < s.size() && s[i] == '.') {
    dot = i++;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  }
  numeric = numeric && i == s.size();
  if (!numeric) return s;
  if (dot != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s[0] == '+') s.erase(0, 1);
  return s;
}

std::string ExtractFinalAnswer(std::string_view text) {
  if (const std::size_t marker = text.rfind("####"); marker != std::string_view::npos) {
    std::string_view rest = text.substr(marker + 4);
    return NormalizeAnswer(rest.substr(0, rest.find('\n')));
  }
  // The last number: [-]digit[digits and ','][.digits].
  std::string_view last;
  const auto is_digit = [&](std::size_t k) {
    return k < text.size() && std::isdigit(static_cast<unsigned char>(text[k]));
  };
  for (std::size_t i = 0; i < text.size();) {
    if (!is_digit(i)) {
      ++i;
      continue;
    }
    std::size_t begin = i;
    if (begin > 0 && text[begin - 1] == '-') --begin;
    while (i < text.size() && (is_digit(i) || (text[i] == ',' && is_digit(i + 1)))) ++i;
    if (i < text.size() && text[i] == '.' && is_digit(i + 1)) {
      ++i;
      while (is_digit(i)) ++i;
    }
    last = text.substr(begin, i - begin);
  }
  return NormalizeAnswer(last);
}

std::string_view TruncateCodePoints(std::string_view text, std::size_t max_chars) {
  if (max_chars == 0) return text;
  std::size_t count = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {  // A lead byte starts a char.
      if (count == max_chars) return text.substr(0, i);
      ++count;
    }
  }
  return text;
}

std::string CleanEmailText(std::string_view message, std::size_t max_chars) {
  // Headers run to the first empty line; a line starting with space or tab continues the one
  // before it (RFC 5322 folding).
  std::string subject;
  bool found_subject = false;
  bool in_subject = false;
  std::size_t pos = 0;
  std::size_t body_begin = message.size();
  while (pos < message.size()) {
    std::size_t end = message.find('\n', pos);
    if (end == std::string_view::npos) end = message.size();
    std::string_view line = message.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = end + 1;
    if (line.empty()) {
      body_begin = std::min(pos, message.size());
      break;
    }
    const bool continuation = line[0] == ' ' || line[0] == '\t';
    if (continuation) {
      if (in_subject) subject.append(" ").append(Trim(line));
      continue;
    }
    in_subject = false;
    constexpr std::string_view kSubject = "subject:";
    if (!found_subject && line.size() >= kSubject.size() &&
        std::equal(kSubject.begin(), kSubject.end(), line.begin(), [](char a, char b) {
          return a == std::tolower(static_cast<unsigned char>(b));
        })) {
      subject = std::string(Trim(line.substr(kSubject.size())));
      found_subject = in_subject = true;
    }
  }
  std::string out = "Subject: " + std::string(Trim(subject)) + "\n";
  bool pending_space = false;
  for (char c : message.substr(body_begin)) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      pending_space = true;
      continue;
    }
    if (pending_space && out.back() != '\n') out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return std::string(TruncateCodePoints(out, max_chars));
}

}  // namespace fedlora::client
