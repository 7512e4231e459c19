// safetensors.h — reading and writing the safetensors format (Hugging Face).
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
// {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the data section. Offsets are relative to the data
// section, which the tensors must cover exactly with no overlap. We write the header padded with
// spaces to a multiple of 8 bytes and tensors in name order.
//
// The reader trusts nothing: header length, JSON, dtypes, shapes and offsets are all checked and
// every error names the file (`source`) and the tensor at fault.
#pragma once

#include <cstddef>
#include <map>
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

}  // namespace fedlora::safetensors
