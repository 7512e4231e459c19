// tensor.h — tensors as plain values, the way they travel between processes and sit in files.
//
// This header must never include LibTorch: the wire codec, the coordinator's round engine and the
// checkpoint store use it without linking LibTorch. Conversion to and from at::Tensor lives in
// client/torch_bridge.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedlora {

// Element types that travel on the wire and in safetensors files. The numeric values are the
// wire values (proto/fedlora.capnp DType); 0 is reserved for "unspecified" and always rejected.
// kU32 holds secure aggregation's masked words (integers mod 2^m), never model values: ParseDType
// does not accept it, so no configuration can ask for it.
enum class DType : std::uint8_t { kF32 = 1, kBF16 = 2, kF16 = 3, kF64 = 4, kU32 = 5 };

std::size_t ByteWidth(DType dtype);
std::string_view DTypeName(DType dtype);  // "f32", "bf16", "f16", "f64", "u32"
// Parses "f32"/"F32"/"float32", "bf16"/"BF16"/"bfloat16", "f16"/"F16"/"float16", "f64"/"F64"
// (the floating-point types only).
std::optional<DType> ParseDType(std::string_view name);

// The dtype and shape of a tensor, without its bytes.
struct TensorSpec {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  friend bool operator==(const TensorSpec&, const TensorSpec&) = default;
};
std::string ShapeString(std::span<const std::int64_t> shape);  // "[8, 64]"

// Number of elements of `shape`, or an error for negative dims or more than 2^56 elements (so
// elements times any dtype width never overflows).
Result<std::int64_t> NumElements(std::span<const std::int64_t> shape);

// A dense, row-major tensor stored as little-endian bytes. A pure value: copying copies the bytes,
// == compares contents, nothing aliases anything.
struct Tensor {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;  // Invariant (see Validate): size == elements * ByteWidth(dtype).

  TensorSpec spec() const { return {dtype, shape}; }
  std::int64_t numel() const;  // Requires a valid shape.
  friend bool operator==(const Tensor&, const Tensor&) = default;
};

// OK when `t`'s byte count matches its shape and dtype. Names `name` in the message.
Status Validate(const Tensor& t, std::string_view name = "tensor");

// Builders for tests and small computations.
Tensor MakeF32(std::vector<std::int64_t> shape, std::span<const float> values);
Tensor MakeF64(std::vector<std::int64_t> shape, std::span<const double> values);
Tensor Zeros(DType dtype, std::vector<std::int64_t> shape);

// Element conversions. Reading widens any dtype to double or float; writing rounds to nearest even.
std::vector<double> ToDoubles(const Tensor& t);
std::vector<float> ToFloats(const Tensor& t);
Tensor FromDoubles(DType dtype, std::vector<std::int64_t> shape, std::span<const double> values);
float BF16ToFloat(std::uint16_t bits);
std::uint16_t FloatToBF16(float value);
float F16ToFloat(std::uint16_t bits);
std::uint16_t FloatToF16(float value);

// True when every element is finite (no NaN or infinity).
bool AllFinite(const Tensor& t);

// Named tensors, e.g. one LoRA adapter keyed by "model.layers.0.self_attn.q_proj.lora_A.weight".
// std::map so iteration order, and therefore encoding, hashing and aggregation, is deterministic.
using TensorMap = std::map<std::string, Tensor, std::less<>>;
using AdapterWeights = TensorMap;

// Total payload bytes of every tensor in `tensors`.
std::size_t PayloadBytes(const TensorMap& tensors);

}  // namespace fedlora
