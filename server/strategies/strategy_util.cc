#include "server/strategies/strategy_util.h"

#include <ATen/ATen.h>

#include "common/crypto/sha256.h"
#include "common/lora/tensor_bridge.h"

namespace fedlora::server {

Result<at::Tensor> Load64(const TensorMap& tensors, const std::string& name) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) return InvalidArgument("tensor '", name, "' is missing");
  return lora::FromWireAs(it->second, at::kDouble);
}

Result<Tensor> Store(const at::Tensor& t, DType dtype) { return lora::ToWire(t, dtype); }

Result<std::vector<at::Tensor>> FactorOfAll(std::span<const ClientUpdate> updates,
                                            const std::string& name) {
  std::vector<at::Tensor> out;
  out.reserve(updates.size());
  for (const ClientUpdate& u : updates) {
    Result<at::Tensor> t = Load64(u.tensors, name);
    if (!t.ok()) return t.status().WithContext(StrCat("client ", u.client_id));
    out.push_back(std::move(t).value());
  }
  return out;
}

std::vector<std::string> AdapterModules(const TensorMap& adapter) {
  constexpr std::string_view kSuffix = ".lora_A.weight";
  std::vector<std::string> modules;
  for (const auto& [name, t] : adapter) {
    if (name.size() > kSuffix.size() && std::string_view(name).ends_with(kSuffix)) {
      modules.push_back(name.substr(0, name.size() - kSuffix.size()));
    }
  }
  return modules;
}

std::uint64_t StreamSeed(std::uint64_t seed, std::uint64_t round, std::string_view client,
                         std::string_view module) {
  const crypto::Digest d = crypto::Sha256(StrCat(seed, "/", round, "/", client, "/", module));
  std::uint64_t out = 0;
  for (int i = 0; i < 8; ++i) out = (out << 8) | static_cast<std::uint8_t>(d[i]);
  return out;
}

}  // namespace fedlora::server
