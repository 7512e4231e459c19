// safetensors.h — reading and writing the safetensors format (Hugging Face), and the small JSON
// side files that sit next to it in a Hugging Face checkpoint.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
// {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the data section. Offsets are relative to the data
// section, which the tensors must cover exactly with no overlap. We write the header padded with
// spaces to a multiple of 8 bytes and tensors in name order.
//
// The reader trusts nothing: header length, JSON, dtypes, shapes and offsets are all checked and
// every error names the file (`source`) and the tensor at fault. Parse (copying) and ParseView /
// MappedFile (zero-copy) share one validation, so they accept and reject exactly the same bytes.
//
// Knows nothing about models: which tensors a checkpoint must hold is the loader's business
// (client/model/hf_checkpoint.h). Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace fedlora::safetensors {

using Metadata = std::map<std::string, std::string, std::less<>>;

struct File {
  TensorMap tensors;
  Metadata metadata;
};

std::vector<std::byte> Serialize(const TensorMap& tensors, const Metadata& metadata = {});

// kDataLoss for truncated or inconsistent files, kInvalidArgument for unsupported dtypes.
Result<File> Parse(std::span<const std::byte> bytes, std::string_view source);

Result<File> Read(const std::string& path);
// Atomic write (see fs::WriteFileAtomic).
Status Write(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

// Safetensors dtype names ("F32", "BF16", "F16", "F64").
std::string_view DTypeTag(DType dtype);

// Writes a new safetensors file at `path`, byte-identical to Serialize of the same tensors, but
// pulls each tensor's bytes from `fetch(name)` just before writing them (in name order), so a
// caller converting a large model needs only one converted tensor in memory at a time. The span
// `fetch` returns must stay valid until its next call. fsyncs the file but does not rename it:
// meant for a file inside a staging directory committed with fs::CommitDirectory.
// kInvalidArgument: `fetch` returned a span of the wrong size (named); `fetch`'s own errors pass
// through; I/O errors as fs::WriteFileSynced. A partial file is removed on error.
using TensorSpecs = std::map<std::string, TensorSpec, std::less<>>;
using FetchBytes = std::function<Result<std::span<const std::byte>>(const std::string& name)>;
Status WriteSyncedStreaming(const std::string& path, const TensorSpecs& specs,
                            const FetchBytes& fetch, const Metadata& metadata = {});

// ---- Zero-copy reading ----

// One tensor of a file: its dtype, shape and bytes, borrowed from the file's buffer or mapping.
// `data.size()` == elements * ByteWidth(dtype). `data` has no particular alignment: a tensor
// following an odd-length BF16 tensor starts on an odd address.
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
};
using TensorViews = std::map<std::string, TensorView, std::less<>>;

struct FileView {
  TensorViews tensors;
  Metadata metadata;
};

// Validates exactly as Parse does (same codes, same messages) but copies no tensor bytes: the
// views point into `bytes`, which must outlive them.
Result<FileView> ParseView(std::span<const std::byte> bytes, std::string_view source);

// A safetensors file mapped read-only into memory (mmap, MAP_PRIVATE, PROT_READ). The header is
// validated by ParseView at Open; the tensor bytes are paged in from the file when first read.
// Held by shared_ptr so that whatever is built over the mapping (e.g. an at::Tensor made with
// from_blob) can keep it alive. Immutable, so any number of threads may read it at once.
// The file must not be truncated while mapped (reading a vanished page raises SIGBUS, as with any
// mmap); replacing it by rename, as fs::WriteFileAtomic does, is safe.
class MappedFile {
 public:
  // kNotFound: no such file. kPermissionDenied, kResourceExhausted: cannot open or map it.
  // kDataLoss: truncated or inconsistent (header length, JSON, offsets past the end, overlaps).
  // kInvalidArgument: a dtype other than F32, BF16, F16, F64. Every message names `path`.
  static Result<std::shared_ptr<const MappedFile>> Open(const std::string& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  const TensorViews& tensors() const { return view_.tensors; }
  const Metadata& metadata() const { return view_.metadata; }
  // The view of tensor `name`, or nullptr. Valid while this object lives.
  const TensorView* Find(std::string_view name) const;
  std::size_t size_bytes() const { return size_; }

 private:
  MappedFile() = default;

  std::string path_;
  void* base_ = nullptr;  // The mapping (munmap'ed by the destructor); nullptr when not mapped.
  std::size_t size_ = 0;
  FileView view_;         // Views into the mapping.
};

// ---- Hugging Face side files (JSON) ----

// Tensor name -> shard file name, from a sharded checkpoint's model.safetensors.index.json
// ("weight_map"; "metadata" is ignored). Shard names are plain file names relative to the index's
// directory: a name with '/' or '\' or equal to "." or ".." is refused, so an index cannot point
// outside its directory.
// kNotFound: no such file. kDataLoss: not JSON, no "weight_map" object, a non-string, empty or
// unsafe shard name. Messages name `path` and the tensor.
using ShardIndex = std::map<std::string, std::string, std::less<>>;
Result<ShardIndex> ReadShardIndex(const std::string& path);
Result<ShardIndex> ParseShardIndex(std::string_view text, std::string_view source);

// A JSON document flattened to its leaves, for small configuration files such as a Hugging Face
// config.json. Nested object keys are joined with '.' ({"rope_scaling": {"factor": 8}} gives
// "rope_scaling.factor"); an empty object is a kNull leaf; arrays are kept whole, as JSON text.
struct JsonLeaf {
  enum class Kind : std::uint8_t { kNull, kBool, kInteger, kNumber, kString, kArray };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::int64_t integer = 0;  // kInteger only (a JSON integer that fits int64).
  double number = 0.0;       // kInteger and kNumber.
  std::string text;          // kString: the string; kArray: the array as compact JSON.
};
using JsonLeaves = std::map<std::string, JsonLeaf, std::less<>>;

// kDataLoss: not JSON or not an object. kNotFound (Read only): no such file. Messages name
// `source` / `path`.
Result<JsonLeaves> ParseJsonLeaves(std::string_view text, std::string_view source);
Result<JsonLeaves> ReadJsonLeaves(const std::string& path);

}  // namespace fedlora::safetensors
