#include "common/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/fs.h"

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

}  // namespace

std::string_view DTypeTag(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF64: return "F64";
  }
  return "?";
}

std::vector<std::byte> Serialize(const TensorMap& tensors, const Metadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    FEDLORA_CHECK_MSG(Validate(t, name).ok(), Validate(t, name).ToString());
    header[name] = {{"dtype", DTypeTag(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string json = header.dump();
  while (json.size() % 8 != 0) json.push_back(' ');
  std::vector<std::byte> out(8 + json.size() + offset);
  const std::uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, json.data(), json.size());
  std::byte* data = out.data() + 8 + json.size();
  for (const auto& [name, t] : tensors) {
    std::memcpy(data, t.data.data(), t.data.size());
    data += t.data.size();
  }
  return out;
}

Result<File> Parse(std::span<const std::byte> bytes, std::string_view source) {
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

  File file;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
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
    ranges.emplace_back(begin, end);
    Tensor t{*dtype, std::move(shape),
             std::vector<std::byte>(data.begin() + static_cast<std::ptrdiff_t>(begin),
                                    data.begin() + static_cast<std::ptrdiff_t>(end))};
    file.tensors.emplace(name, std::move(t));
  }
  // The tensors must tile the data section: sorted by offset, each starts where the last ended.
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t cursor = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin != cursor) {
      return DataLoss(source, ": tensor data overlaps or leaves a gap at byte ", cursor);
    }
    cursor = end;
  }
  if (cursor != data.size()) {
    return DataLoss(source, ": ", data.size() - cursor, " trailing bytes after the last tensor");
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

}  // namespace fedlora::safetensors
