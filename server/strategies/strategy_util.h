// strategy_util.h — small helpers the LibTorch-based strategies share: wire <-> f64 tensors,
// per-module factor lists, and task construction.
//
// Header is torch-light (<ATen/core/Tensor.h>); only strategy .cc files include it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// The tensor `name` of `tensors` as an f64 at::Tensor; kInvalidArgument naming it if absent.
Result<at::Tensor> Load64(const TensorMap& tensors, const std::string& name);
// `t` as a wire tensor of `dtype`.
Result<Tensor> Store(const at::Tensor& t, DType dtype);

// The A (or B) factor of `module` from every update, in f64, in update order.
Result<std::vector<at::Tensor>> FactorOfAll(std::span<const ClientUpdate> updates,
                                            const std::string& name);

// Module names of an adapter's "<module>.lora_A.weight" tensors, sorted.
std::vector<std::string> AdapterModules(const TensorMap& adapter);

// Deterministic per-(seed, round, client, module) random stream, independent of call order.
std::uint64_t StreamSeed(std::uint64_t seed, std::uint64_t round, std::string_view client,
                         std::string_view module);

}  // namespace fedlora::server
