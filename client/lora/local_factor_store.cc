#include "client/lora/local_factor_store.h"

#include <filesystem>
#include <system_error>

#include "common/crypto/sha256.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/safetensors.h"

namespace fedlora::client {
namespace {

constexpr std::string_view kFormat = "fedlora-local-factors/1";

std::string Sanitize(std::string_view name) {
  std::string out;
  for (char c : name) {
    const bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
    out += keep ? c : '_';
  }
  return out.empty() ? std::string("client") : out;
}

std::string LayoutText(const FactorLayout& layout) {
  std::string text;
  for (const auto& [name, shape] : layout) text += StrCat(name, ShapeString(shape), ";");
  return text;
}

TensorMap ZerosFor(const FactorLayout& layout) {
  TensorMap out;
  for (const auto& [name, shape] : layout) out.emplace(name, Zeros(DType::kF32, shape));
  return out;
}

Status CheckAgainstLayout(const FactorLayout& layout, const TensorMap& tensors) {
  for (const auto& [name, t] : tensors) {
    const auto it = layout.find(name);
    if (it == layout.end()) return InvalidArgument("unexpected tensor '", name, "'");
    if (t.dtype != DType::kF32 || t.shape != it->second) {
      return InvalidArgument("tensor '", name, "' is ", DTypeName(t.dtype), ShapeString(t.shape),
                             ", expected f32", ShapeString(it->second));
    }
    FEDLORA_RETURN_IF_ERROR(Validate(t, name));
    if (!AllFinite(t)) return InvalidArgument("tensor '", name, "' holds NaN or infinity");
  }
  for (const auto& [name, shape] : layout) {
    if (!tensors.contains(name)) return InvalidArgument("missing tensor '", name, "'");
  }
  return OkStatus();
}

}  // namespace

LocalFactorStore::LocalFactorStore(std::string dir, std::string client,
                                   std::string base_model_sha256, std::string kind)
    : dir_(dir.empty() ? std::string(".") : std::move(dir)),
      client_(std::move(client)),
      base_model_sha256_(std::move(base_model_sha256)),
      kind_(std::move(kind)) {}

std::string LocalFactorStore::LayoutKey(const FactorLayout& layout) const {
  return StrCat(kFormat, "\n", client_, "\n", kind_, "\n", base_model_sha256_, "\n",
                LayoutText(layout));
}

std::string LocalFactorStore::FilePrefix() const {
  return StrCat(Sanitize(client_), ".", kind_, ".");
}

std::string LocalFactorStore::PathFor(const FactorLayout& layout) const {
  const std::string hex = crypto::ToHex(crypto::Sha256(LayoutKey(layout)));
  return StrCat(dir_, "/", FilePrefix(), hex.substr(0, 16), ".safetensors");
}

TensorMap LocalFactorStore::Load(const FactorLayout& layout, bool* from_store) const {
  if (from_store != nullptr) *from_store = false;
  const std::string path = PathFor(layout);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    // Factors stored for another base model or layout are deliberately not reused; say so.
    std::vector<std::string> others;
    for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end;
         it.increment(ec)) {
      const std::string file = it->path().filename().string();
      if (file.starts_with(FilePrefix()) && file.ends_with(".safetensors")) others.push_back(file);
    }
    if (!others.empty()) {
      LogWarn("client '", client_, "': stored ", kind_, " factors in '", dir_, "' (",
              others.front(), others.size() > 1 ? StrCat(" and ", others.size() - 1, " more") : "",
              ") belong to another base model, rank or target set; starting from zero");
    }
    return ZerosFor(layout);
  }
  Result<safetensors::File> file = safetensors::Read(path);
  Status problem = file.status();
  if (problem.ok()) {
    const auto meta = [&](std::string_view key) {
      const auto it = file->metadata.find(key);
      return it == file->metadata.end() ? std::string() : it->second;
    };
    if (meta("format") != kFormat || meta("client") != client_ ||
        meta("base_model_sha256") != base_model_sha256_ || meta("layout") != LayoutText(layout)) {
      problem = InvalidArgument("its metadata describes another client, base model or layout");
    } else {
      problem = CheckAgainstLayout(layout, file->tensors);
    }
  }
  if (!problem.ok()) {
    LogWarn("client '", client_, "': not using stored ", kind_, " factors '", path, "' (",
            problem.message(), "); starting from zero");
    return ZerosFor(layout);
  }
  if (from_store != nullptr) *from_store = true;
  return std::move(file->tensors);
}

Status LocalFactorStore::Save(const FactorLayout& layout, const TensorMap& tensors) const {
  FEDLORA_RETURN_IF_ERROR(CheckAgainstLayout(layout, tensors));
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(dir_));
  const safetensors::Metadata metadata = {{"format", std::string(kFormat)},
                                          {"client", client_},
                                          {"base_model_sha256", base_model_sha256_},
                                          {"layout", LayoutText(layout)}};
  return safetensors::Write(PathFor(layout), tensors, metadata);
}

}  // namespace fedlora::client
