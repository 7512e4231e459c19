#include "client/model/sp_tokenizer.h"

#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace fedlora::client {
namespace {

// Must equal kAbiVersion in sp_shim.cc; ShimApi below mirrors the functions it exports.
constexpr int kShimAbiVersion = 1;
constexpr char kShimFileName[] = "libfedlora_spm_shim.so";
constexpr char kShimEnvVar[] = "FEDLORA_SPM_SHIM";
// sp_shim.cc returns this (negated) when libsentencepiece threw instead of returning a Status.
constexpr std::int64_t kShimException = 1000;

// RTLD_DEEPBIND makes libsentencepiece resolve its own builtin protobuf before LibTorch's
// libprotobuf (see sp_shim.cc); RTLD_LOCAL keeps all of it out of the global scope. Sanitizer
// runtimes refuse RTLD_DEEPBIND (they must interpose malloc & co.), so sanitized builds go without:
// that still works in binaries whose global scope has no libprotobuf (the torch-free ones).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FEDLORA_SPM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define FEDLORA_SPM_SANITIZED 1
#endif
#endif
#ifdef FEDLORA_SPM_SANITIZED
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

// The shim's C ABI, documented in sp_shim.cc.
struct ShimApi {
  int (*abi_version)();
  int (*create)(const char* bytes, std::size_t size, void** out, char* err, std::size_t err_cap);
  void (*destroy)(void* handle);
  std::int32_t (*piece_size)(const void* handle);
  std::int32_t (*bos_id)(const void* handle);
  std::int32_t (*eos_id)(const void* handle);
  std::int32_t (*unk_id)(const void* handle);
  int (*is_control)(const void* handle, std::int32_t id);
  int (*is_unknown)(const void* handle, std::int32_t id);
  int (*is_byte)(const void* handle, std::int32_t id);
  std::int32_t (*piece_to_id)(const void* handle, const char* piece, std::size_t size);
  std::int64_t (*id_to_piece)(const void* handle, std::int32_t id, char* out, std::size_t cap);
  std::int64_t (*encode)(const void* handle, const char* text, std::size_t size, std::int32_t* ids,
                         std::size_t cap, char* err, std::size_t err_cap);
  std::int64_t (*decode)(const void* handle, const std::int32_t* ids, std::size_t count, char* out,
                         std::size_t cap, char* err, std::size_t err_cap);
};

// The shim once loaded, or why it could not be. Never unloaded: tokenizers may live until exit.
struct LoadedShim {
  ShimApi api{};
  Status status;
};

std::string DlError() {
  const char* e = dlerror();
  return e != nullptr ? e : "unknown dlopen error";
}

// Where to look, in order. $FEDLORA_SPM_SHIM, when set, is the only candidate.
std::vector<std::string> CandidatePaths() {
  const char* env = std::getenv(kShimEnvVar);
  if (env != nullptr && *env != '\0') return {env};
  std::vector<std::string> paths;
#ifdef FEDLORA_SPM_SHIM_BUILD_PATH
  paths.emplace_back(FEDLORA_SPM_SHIM_BUILD_PATH);
#endif
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::string next_to_exe = (exe.parent_path() / kShimFileName).string();
    if (std::find(paths.begin(), paths.end(), next_to_exe) == paths.end()) {
      paths.push_back(next_to_exe);
    }
  }
  return paths;
}

// Opens `path` and resolves every function; "" on success, else why not (the handle is closed).
std::string TryOpen(const std::string& path, ShimApi* api) {
  void* handle = dlopen(path.c_str(), kDlopenFlags);
  if (handle == nullptr) return DlError();
  std::string error;
  auto resolve = [&](auto*& fn, const char* name) {
    dlerror();
    void* symbol = dlsym(handle, name);
    if (symbol == nullptr && error.empty()) error = StrCat("missing ", name, ": ", DlError());
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(symbol);
  };
  resolve(api->abi_version, "fedlora_spm_abi_version");
  resolve(api->create, "fedlora_spm_create");
  resolve(api->destroy, "fedlora_spm_destroy");
  resolve(api->piece_size, "fedlora_spm_piece_size");
  resolve(api->bos_id, "fedlora_spm_bos_id");
  resolve(api->eos_id, "fedlora_spm_eos_id");
  resolve(api->unk_id, "fedlora_spm_unk_id");
  resolve(api->is_control, "fedlora_spm_is_control");
  resolve(api->is_unknown, "fedlora_spm_is_unknown");
  resolve(api->is_byte, "fedlora_spm_is_byte");
  resolve(api->piece_to_id, "fedlora_spm_piece_to_id");
  resolve(api->id_to_piece, "fedlora_spm_id_to_piece");
  resolve(api->encode, "fedlora_spm_encode");
  resolve(api->decode, "fedlora_spm_decode");
  if (error.empty() && api->abi_version() != kShimAbiVersion) {
    error = StrCat("ABI version ", api->abi_version(), ", expected ", kShimAbiVersion,
                   " (a stale build?)");
  }
  if (!error.empty()) {
    dlclose(handle);
    *api = ShimApi{};
  }
  return error;
}

LoadedShim OpenShim() {
  LoadedShim shim;
  std::string tried;
  for (const std::string& path : CandidatePaths()) {
    const std::string error = TryOpen(path, &shim.api);
    if (error.empty()) return shim;
    tried += StrCat(tried.empty() ? "" : "; ", "'", path, "': ", error);
  }
  shim.status = FailedPrecondition("cannot load the SentencePiece shim ", kShimFileName,
                                   " (set ", kShimEnvVar, " to its path); tried ", tried);
  return shim;
}

// Process-wide; the first caller loads it, every later one (from any thread) waits for and reuses
// that result.
const LoadedShim& Shim() {
  static std::once_flag once;
  static LoadedShim shim;
  std::call_once(once, [] { shim = OpenShim(); });
  return shim;
}

}  // namespace

// One model loaded in the shim. Immutable: the shim's const functions may run concurrently.
class SentencePieceTokenizer::Processor {
 public:
  Processor(const ShimApi* api, void* handle)
      : api_(api),
        handle_(handle),
        piece_size_(api->piece_size(handle)),
        bos_id_(api->bos_id(handle)),
        eos_id_(api->eos_id(handle)) {}
  ~Processor() { api_->destroy(handle_); }
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;

  std::int32_t piece_size() const { return piece_size_; }
  TokenId bos_id() const { return bos_id_; }
  TokenId eos_id() const { return eos_id_; }
  bool IsControl(TokenId id) const { return api_->is_control(handle_, id) != 0; }
  bool IsUnknown(TokenId id) const { return api_->is_unknown(handle_, id) != 0; }
  TokenId PieceToId(std::string_view piece) const {
    return api_->piece_to_id(handle_, piece.data(), piece.size());
  }

  // "" for ids outside the vocabulary.
  std::string IdToPiece(TokenId id) const {
    std::string piece(32, '\0');
    std::int64_t n = api_->id_to_piece(handle_, id, piece.data(), piece.size());
    if (static_cast<std::size_t>(n) > piece.size()) {
      piece.resize(static_cast<std::size_t>(n));
      n = api_->id_to_piece(handle_, id, piece.data(), piece.size());
    }
    piece.resize(static_cast<std::size_t>(n));
    return piece;
  }

  // Appends SentencePiece's ids for `text` to `out`.
  void Encode(std::string_view text, std::vector<TokenId>* out) const {
    static_assert(sizeof(TokenId) == sizeof(std::int32_t));
    const std::size_t start = out->size();
    // Usually at most one id per byte plus the dummy prefix; normalization can expand the text,
    // so the shim reports the count it needs and the second call gets that much room.
    std::size_t cap = text.size() + 8;
    for (int attempt = 0;; ++attempt) {
      out->resize(start + cap);
      char err[512] = "";
      const std::int64_t n = api_->encode(handle_, text.data(), text.size(), out->data() + start,
                                          cap, err, sizeof err);
      // Encode fails only for an unloaded model, which Parse rules out.
      FEDLORA_CHECK_MSG(n >= 0, "sentencepiece Encode: ", err);
      if (static_cast<std::size_t>(n) <= cap) {
        out->resize(start + static_cast<std::size_t>(n));
        return;
      }
      FEDLORA_CHECK_MSG(attempt == 0, "sentencepiece Encode: id count changed between calls");
      cap = static_cast<std::size_t>(n);
    }
  }

  // SentencePiece's Decode; every id must be in [0, piece_size()).
  std::string Decode(std::span<const TokenId> ids) const {
    std::string text(ids.size() * 8 + 16, '\0');
    for (int attempt = 0;; ++attempt) {
      char err[512] = "";
      const std::int64_t n =
          api_->decode(handle_, ids.data(), ids.size(), text.data(), text.size(), err, sizeof err);
      FEDLORA_CHECK_MSG(n >= 0, "sentencepiece Decode: ", err);
      if (static_cast<std::size_t>(n) <= text.size()) {
        text.resize(static_cast<std::size_t>(n));
        return text;
      }
      FEDLORA_CHECK_MSG(attempt == 0, "sentencepiece Decode: length changed between calls");
      text.resize(static_cast<std::size_t>(n));
    }
  }

 private:
  const ShimApi* api_;  // Lives until exit (Shim()).
  void* handle_;
  std::int32_t piece_size_;
  TokenId bos_id_;
  TokenId eos_id_;
};

Result<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open tokenizer file '", path, "': ", std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return DataLoss("error reading tokenizer file '", path, "'");
  return Parse(bytes, path);
}

Result<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Parse(
    std::string_view bytes, std::string_view source) {
  const LoadedShim& shim = Shim();
  if (!shim.status.ok()) {
    return shim.status.WithContext(StrCat("tokenizer '", source, "'"));
  }
  void* handle = nullptr;
  char err[1024] = "";
  const int code = shim.api.create(bytes.data(), bytes.size(), &handle, err, sizeof err);
  if (code == -kShimException) {
    return FailedPrecondition("tokenizer '", source, "': libsentencepiece threw: ", err);
  }
  if (code != 0 || handle == nullptr) {
    return InvalidArgument("tokenizer '", source, "' is not a SentencePiece model (", bytes.size(),
                           " bytes): ", err);
  }
  auto processor = std::make_unique<Processor>(&shim.api, handle);
  if (processor->piece_size() <= 0) {
    return InvalidArgument("tokenizer '", source, "': SentencePiece model has no pieces");
  }
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(processor), std::string(source)));
}

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<Processor> processor,
                                               std::string source)
    : processor_(std::move(processor)), source_(std::move(source)) {
  for (TokenId id = 0; id < processor_->piece_size(); ++id) {
    if (!processor_->IsControl(id) && !processor_->IsUnknown(id)) continue;
    std::string piece = processor_->IdToPiece(id);
    if (!piece.empty()) specials_.push_back({std::move(piece), id});
  }
  std::stable_sort(specials_.begin(), specials_.end(), [](const Special& a, const Special& b) {
    return a.piece.size() > b.piece.size();
  });
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::EncodeChunk(std::string_view chunk, std::vector<TokenId>* out) const {
  if (chunk.empty()) return;
  processor_->Encode(chunk, out);
}

std::vector<TokenId> SentencePieceTokenizer::Encode(std::string_view text, bool bos,
                                                    bool eos) const {
  std::vector<TokenId> out;
  if (bos && bos_id() >= 0) out.push_back(bos_id());
  std::size_t start = 0;
  for (std::size_t i = 0; i < text.size();) {
    const Special* hit = nullptr;
    for (const Special& s : specials_) {
      if (text.substr(i).starts_with(s.piece)) {
        hit = &s;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    EncodeChunk(text.substr(start, i - start), &out);
    out.push_back(hit->id);
    i += hit->piece.size();
    start = i;
  }
  EncodeChunk(text.substr(start), &out);
  if (eos && eos_id() >= 0) out.push_back(eos_id());
  return out;
}

std::string SentencePieceTokenizer::Decode(std::span<const TokenId> tokens) const {
  std::vector<TokenId> ids;
  ids.reserve(tokens.size());
  for (TokenId id : tokens) {
    if (id >= 0 && id < vocab_size()) ids.push_back(id);
  }
  return processor_->Decode(ids);
}

std::int32_t SentencePieceTokenizer::vocab_size() const { return processor_->piece_size(); }
TokenId SentencePieceTokenizer::bos_id() const { return processor_->bos_id(); }
TokenId SentencePieceTokenizer::eos_id() const { return processor_->eos_id(); }

TokenId SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  const TokenId id = processor_->PieceToId(piece);  // The unknown id when `piece` is not a piece.
  return id >= 0 && processor_->IdToPiece(id) == piece ? id : -1;
}

std::string SentencePieceTokenizer::Describe() const {
  return StrCat("sentencepiece model (", vocab_size(), " pieces)");
}

}  // namespace fedlora::client
