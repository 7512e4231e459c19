// device_spec.h — the client's `device` setting, parsed without LibTorch (config validation uses
// it); client/train/device.h resolves it against the LibTorch build and the machine.
#pragma once

#include <string_view>

#include "common/status.h"

namespace fedlora::client {

struct DeviceSpec {
  enum class Kind { kAuto, kCpu, kCuda } kind = Kind::kAuto;
  int index = 0;  // CUDA device ordinal ("cuda" = "cuda:0").
};

// "auto", "cpu", "cuda", "cuda:N". kInvalidArgument otherwise, listing the valid forms.
Result<DeviceSpec> ParseDeviceSpec(std::string_view text);

}  // namespace fedlora::client
