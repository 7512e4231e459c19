#include "common/lora/tensor_bridge.h"

#include <ATen/ATen.h>

#include <cstring>
#include <optional>
#include <type_traits>

// The opaque declaration in the header must match LibTorch's definition.
static_assert(std::is_same_v<std::underlying_type_t<c10::ScalarType>, std::int8_t>);

namespace fedlora::lora {
namespace {

std::optional<at::ScalarType> BridgeScalarTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32: return at::kFloat;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF16: return at::kHalf;
    case DType::kF64: return at::kDouble;
    case DType::kU32: return std::nullopt;  // Masked words: never a model tensor.
  }
  return std::nullopt;
}

std::optional<DType> BridgeDTypeOf(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::kF32;
    case at::kBFloat16: return DType::kBF16;
    case at::kHalf: return DType::kF16;
    case at::kDouble: return DType::kF64;
    default: return std::nullopt;
  }
}

}  // namespace

Result<Tensor> ToWire(const at::Tensor& t) try {
  if (!t.defined()) return InvalidArgument("ToWire: undefined tensor");
  const std::optional<DType> dtype = BridgeDTypeOf(t.scalar_type());
  if (!dtype) {
    return InvalidArgument("ToWire: dtype ", c10::toString(t.scalar_type()),
                           " has no wire representation (expected f32, bf16, f16 or f64)");
  }
  // The host is little-endian (static_assert in common/tensor.cc), so raw bytes are wire bytes.
  const at::Tensor dense = t.detach().to(at::kCPU).contiguous();
  Tensor out;
  out.dtype = *dtype;
  out.shape.assign(dense.sizes().begin(), dense.sizes().end());
  out.data.resize(dense.numel() * dense.element_size());
  if (!out.data.empty()) std::memcpy(out.data.data(), dense.data_ptr(), out.data.size());
  return out;
} catch (const c10::Error& e) {  // LibTorch reports by throwing; we translate at the door.
  return Internal("ToWire: ", e.what_without_backtrace());
}

Result<Tensor> ToWire(const at::Tensor& t, DType dtype) try {
  if (!t.defined()) return InvalidArgument("ToWire: undefined tensor");
  const std::optional<at::ScalarType> type = BridgeScalarTypeOf(dtype);
  if (!type) return InvalidArgument("ToWire: invalid wire dtype ", int(dtype));
  return ToWire(t.detach().to(*type));
} catch (const c10::Error& e) {
  return Internal("ToWire: ", e.what_without_backtrace());
}

Result<at::Tensor> FromWire(const Tensor& wire) try {
  FEDLORA_RETURN_IF_ERROR(Validate(wire));
  const std::optional<at::ScalarType> type = BridgeScalarTypeOf(wire.dtype);
  if (!type) return InvalidArgument("FromWire: invalid wire dtype ", int(wire.dtype));
  at::Tensor out = at::empty(wire.shape, at::TensorOptions().dtype(*type));
  if (!wire.data.empty()) std::memcpy(out.data_ptr(), wire.data.data(), wire.data.size());
  return out;
} catch (const c10::Error& e) {
  return Internal("FromWire: ", e.what_without_backtrace());
}

Result<at::Tensor> FromWireAsFloat(const Tensor& wire) {
  return FromWireAs(wire, at::kFloat);
}

Result<at::Tensor> FromWireAs(const Tensor& wire, c10::ScalarType type) try {
  if (!BridgeDTypeOf(type)) {
    return InvalidArgument("FromWireAs: target dtype ", c10::toString(type),
                           " is not a floating type (expected f32, f64, bf16 or f16)");
  }
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor t, FromWire(wire));
  return t.to(type);
} catch (const c10::Error& e) {
  return Internal("FromWireAs: ", e.what_without_backtrace());
}

}  // namespace fedlora::lora
