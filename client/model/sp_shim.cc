// sp_shim.cc — libsentencepiece behind a C ABI, built as the loadable module
// libfedlora_spm_shim.so and opened by sp_tokenizer.cc with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why a separate module: Debian 12's libsentencepiece.so.0 (0.1.97) carries its own copy of
// protobuf 3.14 and exports those symbols, while LibTorch uses the system libprotobuf (3.21). In one
// global symbol scope one of them loses: libsentencepiece first and its protobuf instances
// interpose libprotobuf's, so every LibTorch binary crashes during static initialisation; libprotobuf
// first and SentencePiece's builtin version check throws ("compiled against 3.14.0 ... installed
// version 3.21.12"). Opened with RTLD_DEEPBIND, libsentencepiece binds to its own protobuf first;
// with RTLD_LOCAL none of its symbols enter the global scope. Nothing else may link it.
//
// The ABI, which sp_tokenizer.cc mirrors as function-pointer types (bump kAbiVersion on any change):
//   - No C++ types cross it: handles are opaque pointers, text is (pointer, byte length), ids are
//     int32_t, and no exception leaves a function (each catches everything it could throw).
//   - Functions that can fail return a negative code, -(sentencepiece::util::StatusCode) or
//     kShimException, and write a NUL-terminated (possibly truncated) message into `err`.
//   - Functions that fill a caller buffer return the length it needs; they write only when it fits,
//     so the caller retries with a larger buffer when the result exceeds its capacity.
//   - A handle is immutable after create: any number of threads may use it at once; destroy it once.
//
// Only exported symbols below are visible: the target is built with -fvisibility=hidden.
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#define FEDLORA_SPM_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kAbiVersion = 1;
// An exception escaped libsentencepiece (e.g. its protobuf runtime's version check): not one of
// SentencePiece's StatusCodes, which are 1..16.
constexpr int kShimException = 1000;

using Processor = sentencepiece::SentencePieceProcessor;

const Processor* AsProcessor(const void* handle) { return static_cast<const Processor*>(handle); }

// SentencePiece indexes its piece table with `id` unchecked in the Is* queries.
bool InRange(const void* handle, std::int32_t id) {
  return id >= 0 && id < AsProcessor(handle)->GetPieceSize();
}

void WriteError(char* err, std::size_t err_cap, std::string_view message) {
  if (err == nullptr || err_cap == 0) return;
  const std::size_t n = std::min(message.size(), err_cap - 1);
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

// Negative code for a failed `status`, with its message in `err`.
std::int64_t Fail(const sentencepiece::util::Status& status, char* err, std::size_t err_cap) {
  WriteError(err, err_cap, status.ToString());
  const int code = static_cast<int>(status.code());
  return -(code > 0 ? code : kShimException);
}

std::int64_t FailException(char* err, std::size_t err_cap) {
  try {
    throw;
  } catch (const std::exception& e) {
    WriteError(err, err_cap, e.what());
  } catch (...) {
    WriteError(err, err_cap, "unknown exception in libsentencepiece");
  }
  return -kShimException;
}

}  // namespace

// The ABI version above; the loader refuses a shim whose version differs from its own.
FEDLORA_SPM_API int fedlora_spm_abi_version() { return kAbiVersion; }

// Parses a serialized ModelProto into a new handle stored in *out. 0 on success; on failure a
// negative code, *out == nullptr and the message in `err`.
FEDLORA_SPM_API int fedlora_spm_create(const char* bytes, std::size_t size, void** out, char* err,
                                       std::size_t err_cap) {
  *out = nullptr;
  try {
    auto processor = std::make_unique<Processor>();
    const sentencepiece::util::Status status =
        processor->LoadFromSerializedProto(std::string_view(bytes, size));
    if (!status.ok()) return static_cast<int>(Fail(status, err, err_cap));
    *out = processor.release();
    return 0;
  } catch (...) {
    return static_cast<int>(FailException(err, err_cap));
  }
}

FEDLORA_SPM_API void fedlora_spm_destroy(void* handle) { delete static_cast<Processor*>(handle); }

FEDLORA_SPM_API std::int32_t fedlora_spm_piece_size(const void* handle) {
  return AsProcessor(handle)->GetPieceSize();
}
FEDLORA_SPM_API std::int32_t fedlora_spm_bos_id(const void* handle) {
  return AsProcessor(handle)->bos_id();
}
FEDLORA_SPM_API std::int32_t fedlora_spm_eos_id(const void* handle) {
  return AsProcessor(handle)->eos_id();
}
FEDLORA_SPM_API std::int32_t fedlora_spm_unk_id(const void* handle) {
  return AsProcessor(handle)->unk_id();
}

// 1 or 0; 0 for ids outside [0, piece_size).
FEDLORA_SPM_API int fedlora_spm_is_control(const void* handle, std::int32_t id) {
  return InRange(handle, id) && AsProcessor(handle)->IsControl(id) ? 1 : 0;
}
FEDLORA_SPM_API int fedlora_spm_is_unknown(const void* handle, std::int32_t id) {
  return InRange(handle, id) && AsProcessor(handle)->IsUnknown(id) ? 1 : 0;
}
FEDLORA_SPM_API int fedlora_spm_is_byte(const void* handle, std::int32_t id) {
  return InRange(handle, id) && AsProcessor(handle)->IsByte(id) ? 1 : 0;
}

// The id of `piece`, or the unknown id when it is no piece (SentencePiece's PieceToId).
FEDLORA_SPM_API std::int32_t fedlora_spm_piece_to_id(const void* handle, const char* piece,
                                                     std::size_t size) {
  try {
    return AsProcessor(handle)->PieceToId(std::string_view(piece, size));
  } catch (...) {
    return -1;
  }
}

// Copies the piece of `id` (not NUL-terminated) into out[0, cap) when it fits; returns its length.
// Empty for ids outside the vocabulary.
FEDLORA_SPM_API std::int64_t fedlora_spm_id_to_piece(const void* handle, std::int32_t id, char* out,
                                                     std::size_t cap) {
  if (!InRange(handle, id)) return 0;
  try {
    const std::string& piece = AsProcessor(handle)->IdToPiece(id);
    if (piece.size() <= cap && !piece.empty()) std::memcpy(out, piece.data(), piece.size());
    return static_cast<std::int64_t>(piece.size());
  } catch (...) {
    return 0;
  }
}

// Encodes text[0, size) and copies the ids into ids[0, cap) when they fit; returns their count, or
// a negative code with the message in `err`.
FEDLORA_SPM_API std::int64_t fedlora_spm_encode(const void* handle, const char* text,
                                                std::size_t size, std::int32_t* ids,
                                                std::size_t cap, char* err, std::size_t err_cap) {
  try {
    std::vector<int> result;
    const sentencepiece::util::Status status =
        AsProcessor(handle)->Encode(std::string_view(text, size), &result);
    if (!status.ok()) return Fail(status, err, err_cap);
    if (result.size() <= cap) std::copy(result.begin(), result.end(), ids);
    return static_cast<std::int64_t>(result.size());
  } catch (...) {
    return FailException(err, err_cap);
  }
}

// Decodes ids[0, count) (every id must be in the vocabulary) and copies the UTF-8 text (not
// NUL-terminated) into out[0, cap) when it fits; returns its length, or a negative code with the
// message in `err`.
FEDLORA_SPM_API std::int64_t fedlora_spm_decode(const void* handle, const std::int32_t* ids,
                                                std::size_t count, char* out, std::size_t cap,
                                                char* err, std::size_t err_cap) {
  try {
    const std::vector<int> input(ids, ids + count);
    std::string text;
    const sentencepiece::util::Status status = AsProcessor(handle)->Decode(input, &text);
    if (!status.ok()) return Fail(status, err, err_cap);
    if (text.size() <= cap && !text.empty()) std::memcpy(out, text.data(), text.size());
    return static_cast<std::int64_t>(text.size());
  } catch (...) {
    return FailException(err, err_cap);
  }
}
