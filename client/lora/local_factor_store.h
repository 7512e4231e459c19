// local_factor_store.h — a client's private LoRA factors that never leave it (FedSA-LoRA's B,
// ALGORITHMS.md §4d), persisted across rounds and restarts. Torch-free.
//
// One safetensors file per (client, base model, factor layout) under the client's state
// directory, named "<client>.lora_B.<key>.safetensors" where <key> is a hash of the base-model
// digest and every tensor's name and shape (so a module set or rank change, or another base
// model, never silently reuses a stored factor). The file's metadata repeats the full key and is
// checked on load. Writes are atomic (fs::WriteFileAtomic), so a crash leaves the old or the new
// file, never a torn one.
//
// Thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace fedlora::client {

// The float32 tensors a store holds: name -> shape.
using FactorLayout = std::map<std::string, std::vector<std::int64_t>, std::less<>>;

class LocalFactorStore {
 public:
  // `kind` names the factor ("lora_B"); `client` is sanitised for the file name.
  LocalFactorStore(std::string dir, std::string client, std::string base_model_sha256,
                   std::string kind = "lora_B");

  // The file that holds tensors of `layout`.
  std::string PathFor(const FactorLayout& layout) const;

  // The stored tensors of `layout` (f32, exactly its names and shapes), or zeros when nothing is
  // stored for it yet. A file that cannot be read, or whose metadata, names, dtypes or shapes
  // disagree, is not used (zeros, with a warning); so are stored factors of another layout
  // (zeros, with a warning naming them). `*from_store` tells which happened.
  TensorMap Load(const FactorLayout& layout, bool* from_store = nullptr) const;

  // Writes `tensors` (f32, exactly `layout`) atomically, creating the directory if needed.
  // kInvalidArgument when the tensors do not match `layout`; I/O errors name the path.
  Status Save(const FactorLayout& layout, const TensorMap& tensors) const;

 private:
  std::string LayoutKey(const FactorLayout& layout) const;
  std::string FilePrefix() const;

  std::string dir_;
  std::string client_;
  std::string base_model_sha256_;
  std::string kind_;
};

}  // namespace fedlora::client
