#include "client/train/device.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/version.h>

namespace fedlora::client {

Result<at::Device> ResolveDevice(std::string_view text) {
  FEDLORA_ASSIGN_OR_RETURN(const DeviceSpec spec, ParseDeviceSpec(text));
  const bool has_cuda = torch::cuda::is_available();
  switch (spec.kind) {
    case DeviceSpec::Kind::kCpu:
      return at::Device(at::kCPU);
    case DeviceSpec::Kind::kAuto:
      return has_cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
    case DeviceSpec::Kind::kCuda:
      break;
  }
  if (!at::hasCUDA()) {
    // hasCUDA() is false both for a CPU-only LibTorch and for a CUDA one without a usable
    // driver or GPU; the message says both.
    return FailedPrecondition("device '", text, "': no usable CUDA device (this LibTorch ",
                              TORCH_VERSION, " was built without CUDA, or sees no GPU and "
                              "driver); build against a CUDA LibTorch on a GPU machine "
                              "(docs/gpu.md) or use device: cpu");
  }
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (spec.index >= count) {
    return FailedPrecondition("device '", text, "': ", count, " CUDA device(s) visible",
                              count > 0 ? StrCat(" (cuda:0..cuda:", count - 1, ")") : "");
  }
  return at::Device(at::kCUDA, static_cast<at::DeviceIndex>(spec.index));
}

std::string DescribeDevice(const at::Device& device) {
  if (device.is_cpu()) return StrCat("cpu (", at::get_num_threads(), " threads)");
  return device.str();
}

AutocastScope::AutocastScope(const at::Device& device, bool enabled) {
  if (!enabled || !device.is_cuda()) return;
  active_ = true;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  previous_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
  previous_enabled_ = at::autocast::is_enabled();
  at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
  at::autocast::set_enabled(true);
#endif
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // Leaving the outermost region frees autocast's cache of bf16 weight copies.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(at::kCUDA, previous_enabled_);
#else
  at::autocast::set_enabled(previous_enabled_);
#endif
}

}  // namespace fedlora::client
