// tensor_bridge.h — the one door between fedlora::Tensor (wire values) and LibTorch.
//
// Everything that crosses from the wire into LibTorch, or back, goes through these functions, so
// dtype mapping, byte order and ownership are decided in one place. Both the client (training) and
// the coordinator's strategies (aggregation math, common/lora/factor_math.h) use it. Torch-free
// header: only forward declarations of at::Tensor and c10::ScalarType, so a file may include it
// without LibTorch's include paths. Thread-safe: the functions only read their arguments.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "common/tensor.h"

namespace at {
class Tensor;  // The same forward declaration ATen_fwd.h makes.
}  // namespace at
namespace c10 {
enum class ScalarType : std::int8_t;  // Opaque declaration of c10/core/ScalarType.h's enum.
}  // namespace c10

namespace fedlora::lora {

// Deep-copies `t` (any strides, CPU) into a contiguous little-endian wire value of its own dtype
// (f32, bf16, f16 or f64). kInvalidArgument for other dtypes or an undefined tensor.
Result<Tensor> ToWire(const at::Tensor& t);

// Same, converting the elements to `dtype` first (round to nearest even).
Result<Tensor> ToWire(const at::Tensor& t, DType dtype);

// A new CPU tensor that owns its memory (never aliases `wire.data`), in the wire's dtype.
// kInvalidArgument when `wire` fails Validate (byte count disagrees with shape and dtype).
Result<at::Tensor> FromWire(const Tensor& wire);

// FromWire, then converted to float32 (the dtype the client's parameters live in).
Result<at::Tensor> FromWireAsFloat(const Tensor& wire);

// FromWire, then converted to `type` (at::kDouble for the strategies' f64 math). kInvalidArgument
// unless `type` is a floating type (f32, f64, bf16, f16).
Result<at::Tensor> FromWireAs(const Tensor& wire, c10::ScalarType type);

}  // namespace fedlora::lora
