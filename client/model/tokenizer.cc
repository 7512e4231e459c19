#include "client/model/tokenizer.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <queue>

namespace fedlora::client {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

Result<std::vector<std::byte>> ReadTokenizerFile(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return NotFound("cannot open tokenizer file '", path, "': ", std::strerror(errno));
  std::vector<std::byte> bytes;
  std::byte buffer[1 << 16];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file.get())) > 0) {
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
  if (std::ferror(file.get())) {
    return DataLoss("error reading tokenizer file '", path, "': ", std::strerror(errno));
  }
  return bytes;
}

// Reads little-endian scalars from a byte span, remembering how far it got.
class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  template <typename T>
  bool Read(T* out) {
    if (bytes_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::size_t len, std::string* out) {
    if (bytes_.size() - pos_ < len) return false;
    out->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return true;
  }
  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
};

std::string BytePieceName(int byte) {
  char name[8];
  std::snprintf(name, sizeof name, "<0x%02X>", byte);
  return name;
}

// A merge that was possible when it was queued: symbols `left` and `right` (node indices) holding
// `left_id` and `right_id` concatenate to piece `merged` with `score`.
struct MergeCandidate {
  float score;
  std::uint32_t left;
  std::uint32_t right;
  TokenId left_id;
  TokenId right_id;
  TokenId merged;
};

// Max-heap order: higher score first; on equal scores the leftmost pair, as run.c's scan picks
// the first pair with a strictly greater score. Node indices increase left to right and a merged
// symbol keeps its left node's index, so comparing `left` compares current positions.
struct MergeOrder {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

// run.c only merges pairs scoring above its initial best_score of -1e10.
constexpr float kMinMergeScore = -1e10f;

}  // namespace

Result<Tokenizer> Tokenizer::Load(const std::string& path, std::int32_t vocab_size) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, ReadTokenizerFile(path));
  return Parse(bytes, vocab_size, path);
}

Result<Tokenizer> Tokenizer::Parse(std::span<const std::byte> bytes, std::int32_t vocab_size,
                                   std::string_view source) {
  constexpr std::int32_t kMinVocab = kFirstByteToken + 256;
  if (vocab_size < kMinVocab) {
    return InvalidArgument("tokenizer '", source, "': vocab_size ", vocab_size,
                           " is below ", kMinVocab, " (3 specials + 256 byte-fallback pieces)");
  }
  ByteReader reader(bytes);
  Tokenizer t;
  if (!reader.Read(&t.max_token_length_)) {
    return DataLoss("tokenizer '", source, "' is truncated: ", bytes.size(),
                    " bytes, too short for its header");
  }
  if (t.max_token_length_ <= 0 || t.max_token_length_ > (1 << 20)) {
    return InvalidArgument("tokenizer '", source, "': impossible max_token_length ",
                           t.max_token_length_, " (not a llama2.c tokenizer file?)");
  }
  // Every record takes at least 8 bytes (score and length): refuse a vocab_size the file cannot
  // hold before allocating anything for it (found by fuzzing: 4 bytes of vocab_size made a
  // 2.7 KB file allocate 2.6 GB).
  if (reader.remaining() / 8 < static_cast<std::size_t>(vocab_size)) {
    return DataLoss("tokenizer '", source, "' is truncated: ", bytes.size(),
                    " bytes cannot hold ", vocab_size, " pieces of at least 8 bytes each");
  }
  t.pieces_.resize(static_cast<std::size_t>(vocab_size));
  t.scores_.resize(static_cast<std::size_t>(vocab_size));
  for (TokenId id = 0; id < vocab_size; ++id) {
    const std::size_t offset = reader.pos();
    float score;
    std::int32_t len;
    if (!reader.Read(&score) || !reader.Read(&len)) {
      return DataLoss("tokenizer '", source, "' is truncated in the record of piece ", id,
                      " at byte ", offset, " (expected ", vocab_size, " pieces)");
    }
    if (len < 0 || len > t.max_token_length_) {
      return InvalidArgument("tokenizer '", source, "': piece ", id, " at byte ", offset,
                             " has length ", len, " outside [0, max_token_length=",
                             t.max_token_length_, "]");
    }
    if (!std::isfinite(score)) {
      return InvalidArgument("tokenizer '", source, "': piece ", id, " at byte ", offset,
                             " has a non-finite score");
    }
    if (!reader.ReadString(static_cast<std::size_t>(len), &t.pieces_[id])) {
      return DataLoss("tokenizer '", source, "' is truncated inside piece ", id, " at byte ",
                      offset, " (expected ", vocab_size, " pieces)");
    }
    t.scores_[id] = score;
  }
  if (reader.remaining() != 0) {
    return InvalidArgument("tokenizer '", source, "' has ", reader.remaining(),
                           " bytes after piece ", vocab_size - 1,
                           " (hint: it holds more pieces than the model's vocab_size ",
                           vocab_size, "; is it this model's tokenizer?)");
  }
  for (int b = 0; b < 256; ++b) {
    const std::string expected = BytePieceName(b);
    if (t.pieces_[kFirstByteToken + b] != expected) {
      return InvalidArgument("tokenizer '", source, "': piece ", kFirstByteToken + b, " is '",
                             t.pieces_[kFirstByteToken + b], "', expected byte-fallback piece '",
                             expected, "'");
    }
  }
  t.decoded_ = t.pieces_;
  for (int b = 0; b < 256; ++b) t.decoded_[kFirstByteToken + b] = std::string(1, char(b));
  t.ids_.reserve(t.pieces_.size());
  for (TokenId id = 0; id < vocab_size; ++id) t.ids_.emplace(t.pieces_[id], id);  // Keeps lowest.
  t.dummy_prefix_ = t.Lookup(" ");
  return t;
}

TokenId Tokenizer::Lookup(std::string_view piece) const {
  const auto it = ids_.find(piece);
  return it == ids_.end() ? -1 : it->second;
}

const std::string& Tokenizer::piece(TokenId id) const {
  FEDLORA_CHECK_MSG(id >= 0 && id < vocab_size(), "token id ", id, " out of range");
  return pieces_[id];
}

float Tokenizer::score(TokenId id) const {
  FEDLORA_CHECK_MSG(id >= 0 && id < vocab_size(), "token id ", id, " out of range");
  return scores_[id];
}

std::vector<TokenId> Tokenizer::Encode(std::string_view text, bool bos, bool eos) const {
  std::vector<TokenId> symbols;
  symbols.reserve(text.size() + 3);
  if (bos) symbols.push_back(kBos);
  if (!text.empty()) {
    symbols.push_back(dummy_prefix_ >= 0 ? dummy_prefix_ : kFirstByteToken + ' ');
  }
  // Code points as run.c groups them: one byte, then continuation bytes (10xxxxxx) up to 4 bytes.
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = 1;
    while (len < 4 && i + len < text.size() &&
           (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) {
      ++len;
    }
    const TokenId id = Lookup(text.substr(i, len));
    if (id >= 0) {
      symbols.push_back(id);
    } else {
      for (std::size_t j = i; j < i + len; ++j) {
        symbols.push_back(kFirstByteToken + static_cast<unsigned char>(text[j]));
      }
    }
    i += len;
  }

  // Merges over a doubly linked list of symbols; the queue may hold stale candidates, which are
  // recognised (a side was merged away or changed id) and skipped when popped.
  const std::uint32_t n = static_cast<std::uint32_t>(symbols.size());
  constexpr std::uint32_t kNone = 0xFFFFFFFFu;
  std::vector<std::uint32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (std::uint32_t i = 0; i < n; ++i) {
    prev[i] = i == 0 ? kNone : i - 1;
    next[i] = i + 1 == n ? kNone : i + 1;
  }
  // Pair -> merged id (or -1) for this call; the same few hundred pairs recur constantly.
  std::unordered_map<std::uint64_t, TokenId> pair_cache;
  std::string concat;
  auto merged_id = [&](TokenId a, TokenId b) {
    const std::uint64_t key = (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
    const auto [it, inserted] = pair_cache.try_emplace(key, -1);
    if (inserted) {
      concat.assign(pieces_[a]);
      concat.append(pieces_[b]);
      it->second = Lookup(concat);
    }
    return it->second;
  };
  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, MergeOrder> queue;
  auto consider = [&](std::uint32_t left, std::uint32_t right) {
    if (left == kNone || right == kNone) return;
    const TokenId merged = merged_id(symbols[left], symbols[right]);
    if (merged < 0 || !(scores_[merged] > kMinMergeScore)) return;
    queue.push({scores_[merged], left, right, symbols[left], symbols[right], merged});
  };
  for (std::uint32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!queue.empty()) {
    const MergeCandidate c = queue.top();
    queue.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        symbols[c.left] != c.left_id || symbols[c.right] != c.right_id) {
      continue;  // Stale.
    }
    symbols[c.left] = c.merged;
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.right] != kNone) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }

  std::vector<TokenId> tokens;
  tokens.reserve(n + 1);
  for (std::uint32_t i = n == 0 ? kNone : 0; i != kNone; i = next[i]) tokens.push_back(symbols[i]);
  if (eos) tokens.push_back(kEos);
  return tokens;
}

std::string_view Tokenizer::DecodePiece(TokenId prev, TokenId token) const {
  FEDLORA_CHECK_MSG(token >= 0 && token < vocab_size(), "token id ", token, " out of range");
  std::string_view text = decoded_[token];
  // run.c strips the space from the raw piece, so a byte token <0x20> after BOS keeps its space.
  if (prev == kBos && !IsByteToken(token) && !text.empty() && text.front() == ' ') {
    text.remove_prefix(1);
  }
  return text;
}

std::string Tokenizer::Decode(std::span<const TokenId> tokens) const {
  std::string out;
  TokenId prev = -1;
  for (TokenId token : tokens) {
    if (token != kBos && token != kEos) out.append(DecodePiece(prev, token));
    prev = token;
  }
  return out;
}

std::string Tokenizer::Describe() const {
  return StrCat("llama2.c tokenizer (", pieces_.size(), " pieces)");
}

}  // namespace fedlora::client
