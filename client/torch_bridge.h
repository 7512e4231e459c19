// torch_bridge.h — the one door between fedlora::Tensor (wire values) and LibTorch.
//
// Everything that crosses from the wire into LibTorch, or back, goes through these functions, so
// dtype mapping, byte order and ownership are decided in one place. Torch-light header: only the
// forward declaration of at::Tensor. Thread-safe: the functions only read their arguments.
#pragma once

#include "common/status.h"
#include "common/tensor.h"

namespace at {
class Tensor;  // The same forward declaration ATen_fwd.h makes.
}  // namespace at

namespace fedlora::client {

// Deep-copies `t` (any strides, CPU) into a contiguous little-endian wire value of its own dtype
// (f32, bf16, f16 or f64). kInvalidArgument for other dtypes or an undefined tensor.
Result<Tensor> ToWire(const at::Tensor& t);

// Same, converting the elements to `dtype` first (round to nearest even).
Result<Tensor> ToWire(const at::Tensor& t, DType dtype);

// A new CPU tensor that owns its memory (never aliases `wire.data`), in the wire's dtype.
// kInvalidArgument when `wire` fails Validate (byte count disagrees with shape and dtype).
Result<at::Tensor> FromWire(const Tensor& wire);

// FromWire, then converted to float32 (the dtype our parameters live in).
Result<at::Tensor> FromWireAsFloat(const Tensor& wire);

}  // namespace fedlora::client
