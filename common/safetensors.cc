#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/unique_fd.h"

namespace fedlora::safetensors {
namespace {

// Headers larger than this are rejected outright, as the reference implementation does.
constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

std::optional<DType> FromTag(std::string_view tag) {
  if (tag == "F32") return DType::kF32;
  if (tag == "BF16") return DType::kBF16;
  if (tag == "F16") return DType::kF16;
  if (tag == "F64") return DType::kF64;
  return std::nullopt;
}

Status OpenError(std::string_view what, const std::string& path) {
  return fs::ErrnoStatus(errno, what, path);
}

void Flatten(const nlohmann::json& value, const std::string& key, JsonLeaves& out) {
  JsonLeaf leaf;
  if (value.is_object() && !value.empty()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      Flatten(it.value(), key.empty() ? it.key() : StrCat(key, ".", it.key()), out);
    }
    return;
  }
  if (value.is_boolean()) {
    leaf.kind = JsonLeaf::Kind::kBool;
    leaf.boolean = value.get<bool>();
  } else if (value.is_number_integer() &&
             (!value.is_number_unsigned() ||
              value.get<std::uint64_t>() <=
                  static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))) {
    leaf.kind = JsonLeaf::Kind::kInteger;
    leaf.integer = value.get<std::int64_t>();
    leaf.number = static_cast<double>(leaf.integer);
  } else if (value.is_number()) {
    leaf.kind = JsonLeaf::Kind::kNumber;
    leaf.number = value.get<double>();
  } else if (value.is_string()) {
    leaf.kind = JsonLeaf::Kind::kString;
    leaf.text = value.get<std::string>();
  } else if (value.is_array()) {
    leaf.kind = JsonLeaf::Kind::kArray;
    leaf.text = value.dump();
  }  // null and {} stay kNull.
  out[key] = std::move(leaf);
}

Result<nlohmann::json> ParseJsonObject(std::string_view text, std::string_view source) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return DataLoss(source, ": not valid JSON: ", e.what());
  }
  if (!doc.is_object()) return DataLoss(source, ": not a JSON object");
  return doc;
}

}  // namespace

std::string_view DTypeTag(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF64: return "F64";
    case DType::kU32: return "U32";  // Written only; FromTag reads the float types.
  }
  return "?";
}

namespace {

// The 8-byte length prefix and the JSON header (padded with spaces to a multiple of 8) for
// tensors laid out back to back in name order; `data_bytes` receives the data section's size.
std::vector<std::byte> HeaderBytes(const TensorSpecs& specs, const Metadata& metadata,
                                   std::uint64_t* data_bytes) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const auto& [name, spec] : specs) {
    Result<std::int64_t> numel = NumElements(spec.shape);
    FEDLORA_CHECK_MSG(numel.ok(), name, ": ", numel.status().ToString());
    const std::uint64_t bytes = static_cast<std::uint64_t>(*numel) * ByteWidth(spec.dtype);
    header[name] = {{"dtype", DTypeTag(spec.dtype)},
                    {"shape", spec.shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  while (json.size() % 8 != 0) json.push_back(' ');
  std::vector<std::byte> out(8 + json.size());
  const std::uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, json.data(), json.size());
  *data_bytes = offset;
  return out;
}

Status WriteAllTo(int fd, std::span<const std::byte> bytes, const std::string& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return OpenError("write", path);
    }
    done += static_cast<std::size_t>(n);
  }
  return OkStatus();
}

}  // namespace

std::vector<std::byte> Serialize(const TensorMap& tensors, const Metadata& metadata) {
  TensorSpecs specs;
  for (const auto& [name, t] : tensors) {
    FEDLORA_CHECK_MSG(Validate(t, name).ok(), Validate(t, name).ToString());
    specs.emplace(name, t.spec());
  }
  std::uint64_t data_bytes = 0;
  std::vector<std::byte> out = HeaderBytes(specs, metadata, &data_bytes);
  out.reserve(out.size() + data_bytes);
  for (const auto& [name, t] : tensors) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

Status WriteSyncedStreaming(const std::string& path, const TensorSpecs& specs,
                            const FetchBytes& fetch, const Metadata& metadata) {
  std::uint64_t data_bytes = 0;
  const std::vector<std::byte> header = HeaderBytes(specs, metadata, &data_bytes);
  const UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return OpenError("create", path);
  const auto write_all = [&]() -> Status {
    FEDLORA_RETURN_IF_ERROR(WriteAllTo(fd.get(), header, path));
    for (const auto& [name, spec] : specs) {
      FEDLORA_ASSIGN_OR_RETURN(const std::span<const std::byte> bytes, fetch(name));
      const std::size_t want =
          static_cast<std::size_t>(*NumElements(spec.shape)) * ByteWidth(spec.dtype);
      if (bytes.size() != want) {
        return InvalidArgument(path, ": tensor '", name, "' came with ", bytes.size(),
                               " bytes, but ", DTypeName(spec.dtype), " ",
                               ShapeString(spec.shape), " needs ", want);
      }
      FEDLORA_RETURN_IF_ERROR(WriteAllTo(fd.get(), bytes, path));
    }
    if (::fsync(fd.get()) != 0) return OpenError("fsync", path);
    return OkStatus();
  };
  const Status s = write_all();
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

Result<FileView> ParseView(std::span<const std::byte> bytes, std::string_view source) {
  if (bytes.size() < 8) {
    return DataLoss(source, ": ", bytes.size(), " bytes is too short for a safetensors header");
  }
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - 8) {
    return DataLoss(source, ": header length ", header_len, " exceeds the file (", bytes.size(),
                    " bytes) or the 100 MiB limit");
  }
  const std::string_view header_text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::exception& e) {
    return DataLoss(source, ": header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) return DataLoss(source, ": header is not a JSON object");
  const std::span<const std::byte> data = bytes.subspan(8 + header_len);

  FileView file;
  struct Range {
    std::uint64_t begin, end;
    const std::string* name;
    bool operator<(const Range& o) const { return std::tie(begin, end) < std::tie(o.begin, o.end); }
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return DataLoss(source, ": __metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return DataLoss(source, ": __metadata__ value '", m.key(), "' is not a string");
        }
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      return DataLoss(source, ": tensor '", name, "' lacks dtype, shape or data_offsets");
    }
    const nlohmann::json& jdtype = entry["dtype"];
    const nlohmann::json& jshape = entry["shape"];
    const nlohmann::json& joffsets = entry["data_offsets"];
    if (!jdtype.is_string()) return DataLoss(source, ": tensor '", name, "': dtype is not a string");
    const std::optional<DType> dtype = FromTag(jdtype.get<std::string>());
    if (!dtype) {
      return InvalidArgument(source, ": tensor '", name, "' has unsupported dtype '",
                             jdtype.get<std::string>(), "' (supported: F32, BF16, F16, F64)");
    }
    if (!jshape.is_array()) return DataLoss(source, ": tensor '", name, "': shape is not a list");
    std::vector<std::int64_t> shape;
    for (const auto& d : jshape) {
      if (!d.is_number_unsigned()) {
        return DataLoss(source, ": tensor '", name, "': shape entries must be non-negative integers");
      }
      shape.push_back(d.get<std::int64_t>());
    }
    if (!joffsets.is_array() || joffsets.size() != 2 || !joffsets[0].is_number_unsigned() ||
        !joffsets[1].is_number_unsigned()) {
      return DataLoss(source, ": tensor '", name, "': data_offsets must be [begin, end]");
    }
    const std::uint64_t begin = joffsets[0].get<std::uint64_t>();
    const std::uint64_t end = joffsets[1].get<std::uint64_t>();
    if (begin > end || end > data.size()) {
      return DataLoss(source, ": tensor '", name, "': data_offsets [", begin, ", ", end,
                      "] fall outside the ", data.size(), "-byte data section (truncated file?)");
    }
    Result<std::int64_t> numel = NumElements(shape);
    if (!numel.ok()) return DataLoss(source, ": tensor '", name, "': ", numel.status().message());
    const std::uint64_t want = static_cast<std::uint64_t>(*numel) * ByteWidth(*dtype);
    if (end - begin != want) {
      return DataLoss(source, ": tensor '", name, "': ", end - begin, " bytes for ",
                      DTypeName(*dtype), " ", ShapeString(shape), ", which needs ", want);
    }
    ranges.push_back({begin, end, &name});
    file.tensors.emplace(name,
                         TensorView{*dtype, std::move(shape), data.subspan(begin, end - begin)});
  }
  // The tensors must tile the data section: sorted by offset, each starts where the last ended.
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const Range& r : ranges) {
    if (r.begin < cursor) {
      return DataLoss(source, ": tensor '", *r.name, "' data_offsets [", r.begin, ", ", r.end,
                      "] overlap tensor '", *previous, "', which ends at byte ", cursor);
    }
    if (r.begin > cursor) {
      return DataLoss(source, ": tensor data leaves a gap at byte ", cursor, " before tensor '",
                      *r.name, "'");
    }
    cursor = r.end;
    previous = r.name;
  }
  if (cursor != data.size()) {
    return DataLoss(source, ": ", data.size() - cursor, " trailing bytes after the last tensor");
  }
  return file;
}

Result<File> Parse(std::span<const std::byte> bytes, std::string_view source) {
  FEDLORA_ASSIGN_OR_RETURN(FileView view, ParseView(bytes, source));
  File file;
  file.metadata = std::move(view.metadata);
  for (auto& [name, v] : view.tensors) {
    file.tensors.emplace(name, Tensor{v.dtype, std::move(v.shape),
                                      std::vector<std::byte>(v.data.begin(), v.data.end())});
  }
  return file;
}

Result<File> Read(const std::string& path) {
  FEDLORA_ASSIGN_OR_RETURN(std::string bytes, fs::ReadFile(path));
  return Parse(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), path);
}

Status Write(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  const std::vector<std::byte> bytes = Serialize(tensors, metadata);
  return fs::WriteFileAtomic(path, bytes);
}

Result<std::shared_ptr<const MappedFile>> MappedFile::Open(const std::string& path) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return OpenError("open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return OpenError("stat", path);
  if (!S_ISREG(st.st_mode)) return InvalidArgument("'", path, "' is not a regular file");
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<std::size_t>(st.st_size);
  std::span<const std::byte> bytes;
  if (file->size_ > 0) {  // mmap refuses length 0; ParseView reports the empty file instead.
    void* base = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (base == MAP_FAILED) return OpenError("mmap", path);
    file->base_ = base;
    bytes = std::span<const std::byte>(static_cast<const std::byte*>(base), file->size_);
  }
  FEDLORA_ASSIGN_OR_RETURN(file->view_, ParseView(bytes, path));
  return std::shared_ptr<const MappedFile>(std::move(file));
}

MappedFile::~MappedFile() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

const TensorView* MappedFile::Find(std::string_view name) const {
  const auto it = view_.tensors.find(name);
  return it == view_.tensors.end() ? nullptr : &it->second;
}

Result<ShardIndex> ParseShardIndex(std::string_view text, std::string_view source) {
  FEDLORA_ASSIGN_OR_RETURN(const nlohmann::json doc, ParseJsonObject(text, source));
  const auto map = doc.find("weight_map");
  if (map == doc.end() || !map->is_object()) {
    return DataLoss(source, ": no \"weight_map\" object (is this a safetensors index?)");
  }
  ShardIndex index;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return DataLoss(source, ": weight_map entry of tensor '", it.key(), "' is not a string");
    }
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." ||
        shard.find_first_of("/\\") != std::string::npos) {
      return DataLoss(source, ": tensor '", it.key(), "' maps to '", shard,
                      "', which is not a plain file name in the index's directory");
    }
    index.emplace(it.key(), std::move(shard));
  }
  return index;
}

Result<ShardIndex> ReadShardIndex(const std::string& path) {
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(path));
  return ParseShardIndex(text, path);
}

Result<JsonLeaves> ParseJsonLeaves(std::string_view text, std::string_view source) {
  FEDLORA_ASSIGN_OR_RETURN(const nlohmann::json doc, ParseJsonObject(text, source));
  JsonLeaves leaves;
  for (auto it = doc.begin(); it != doc.end(); ++it) Flatten(it.value(), it.key(), leaves);
  return leaves;
}

Result<JsonLeaves> ReadJsonLeaves(const std::string& path) {
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(path));
  return ParseJsonLeaves(text, path);
}

}  // namespace fedlora::safetensors
