// device.h — where the client computes: parsing `device: auto | cpu | cuda | cuda:N`, checking it
// against this LibTorch build and machine, and bf16 autocast on CUDA.
//
// Parsing is torch-free (device_spec.h); this part needs LibTorch (fedlora_client_ml).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "client/device_spec.h"
#include "common/status.h"

namespace fedlora::client {

// The device to compute on: auto → cuda:0 when this LibTorch has CUDA and a GPU is visible,
// else cpu. kFailedPrecondition: cuda asked for but this LibTorch was built without CUDA (the
// message says how to build against a CUDA LibTorch: docs/gpu.md) or the ordinal is not visible
// (names how many GPUs there are).
Result<at::Device> ResolveDevice(std::string_view text);

// "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)" or "cpu (16 threads)", for logs and Hello.
std::string DescribeDevice(const at::Device& device);

// While alive, CUDA operations on this thread run under autocast to bfloat16 (matmuls and
// linear layers in bf16, reductions and losses in float32), as torch.autocast("cuda",
// dtype=torch.bfloat16) does. A no-op on the CPU or when `enabled` is false. Not nestable
// across threads: autocast state is thread-local.
class AutocastScope {
 public:
  AutocastScope(const at::Device& device, bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool previous_enabled_ = false;
};

}  // namespace fedlora::client
