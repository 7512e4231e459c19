#include "common/tensor.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace fedlora {
namespace {

static_assert(std::endian::native == std::endian::little,
              "fedlora stores tensors little-endian and assumes a little-endian host");

template <typename T>
T Load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void Store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

std::size_t ByteWidth(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF64: return 8;
    case DType::kU32: return 4;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kF64: return "f64";
    case DType::kU32: return "u32";
  }
  return "invalid";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "f32" || name == "F32" || name == "float32") return DType::kF32;
  if (name == "bf16" || name == "BF16" || name == "bfloat16") return DType::kBF16;
  if (name == "f16" || name == "F16" || name == "float16") return DType::kF16;
  if (name == "f64" || name == "F64" || name == "float64") return DType::kF64;
  return std::nullopt;
}

std::string ShapeString(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Result<std::int64_t> NumElements(std::span<const std::int64_t> shape) {
  // 2^56 elements of at most 8 bytes keeps every byte count below 2^59: no overflow anywhere.
  constexpr std::int64_t kLimit = std::int64_t{1} << 56;
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return InvalidArgument("negative dimension in shape ", ShapeString(shape));
    if (d != 0 && n > kLimit / d) {
      return InvalidArgument("shape ", ShapeString(shape), " has too many elements");
    }
    n *= d;
  }
  if (n > kLimit) return InvalidArgument("shape ", ShapeString(shape), " has too many elements");
  return n;
}

std::int64_t Tensor::numel() const {
  Result<std::int64_t> n = NumElements(shape);
  FEDLORA_CHECK_MSG(n.ok(), n.status().ToString());
  return *n;
}

Status Validate(const Tensor& t, std::string_view name) {
  if (ByteWidth(t.dtype) == 0) return InvalidArgument(name, ": invalid dtype");
  Result<std::int64_t> n = NumElements(t.shape);
  if (!n.ok()) return n.status().WithContext(name);
  const std::uint64_t want = static_cast<std::uint64_t>(*n) * ByteWidth(t.dtype);
  if (t.data.size() != want) {
    return InvalidArgument(name, ": ", t.data.size(), " bytes, but ", DTypeName(t.dtype), " ",
                           ShapeString(t.shape), " needs ", want);
  }
  return OkStatus();
}

float BF16ToFloat(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t FloatToBF16(float value) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // Keep it a NaN.
  const std::uint32_t rounding = 0x7FFF + ((u >> 16) & 1);                     // Nearest even.
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

float F16ToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1F;
  std::uint32_t mant = h & 0x3FF;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // Subnormal: normalise.
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t FloatToF16(float value) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000);
  const std::uint32_t abs = u & 0x7FFFFFFF;
  if (abs > 0x7F800000) return sign | 0x7E00;    // NaN.
  if (abs >= 0x477FF000) return sign | 0x7C00;   // Overflows to infinity after rounding.
  if (abs < 0x38800000) {                        // Subnormal or zero in f16.
    if (abs < 0x33000000) return sign;           // Rounds to zero.
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7FFFFF) | 0x800000;
    const std::uint32_t shift = 126 - exp;  // 14 + (112 - exp) ... bits to drop beyond f16's 10.
    const std::uint32_t halfway = 1u << (shift - 1);
    std::uint32_t result = mant >> shift;
    const std::uint32_t rest = mant & ((1u << shift) - 1);
    if (rest > halfway || (rest == halfway && (result & 1))) ++result;
    return sign | static_cast<std::uint16_t>(result);
  }
  std::uint32_t result = ((abs >> 13) - (112u << 10));
  const std::uint32_t rest = abs & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (result & 1))) ++result;
  return sign | static_cast<std::uint16_t>(result);
}

std::vector<double> ToDoubles(const Tensor& t) {
  const std::size_t n = t.data.size() / ByteWidth(t.dtype);
  std::vector<double> out(n);
  const std::byte* p = t.data.data();
  for (std::size_t i = 0; i < n; ++i) {
    switch (t.dtype) {
      case DType::kF32: out[i] = Load<float>(p + 4 * i); break;
      case DType::kF64: out[i] = Load<double>(p + 8 * i); break;
      case DType::kBF16: out[i] = BF16ToFloat(Load<std::uint16_t>(p + 2 * i)); break;
      case DType::kF16: out[i] = F16ToFloat(Load<std::uint16_t>(p + 2 * i)); break;
      case DType::kU32: out[i] = Load<std::uint32_t>(p + 4 * i); break;
    }
  }
  return out;
}

std::vector<float> ToFloats(const Tensor& t) {
  if (t.dtype == DType::kF32) {
    std::vector<float> out(t.data.size() / 4);
    std::memcpy(out.data(), t.data.data(), out.size() * 4);
    return out;
  }
  std::vector<double> d = ToDoubles(t);
  return std::vector<float>(d.begin(), d.end());
}

Tensor FromDoubles(DType dtype, std::vector<std::int64_t> shape, std::span<const double> values) {
  Tensor t{dtype, std::move(shape), std::vector<std::byte>(values.size() * ByteWidth(dtype))};
  std::byte* p = t.data.data();
  for (std::size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::kF32: Store<float>(p + 4 * i, static_cast<float>(values[i])); break;
      case DType::kF64: Store<double>(p + 8 * i, values[i]); break;
      case DType::kBF16:
        Store<std::uint16_t>(p + 2 * i, FloatToBF16(static_cast<float>(values[i])));
        break;
      case DType::kF16:
        Store<std::uint16_t>(p + 2 * i, FloatToF16(static_cast<float>(values[i])));
        break;
      case DType::kU32:  // Rounded and saturated (u32 holds integers, never model values).
        Store<std::uint32_t>(p + 4 * i, static_cast<std::uint32_t>(std::clamp(
                                            std::nearbyint(values[i]), 0.0, 4294967295.0)));
        break;
    }
  }
  FEDLORA_CHECK(Validate(t).ok());
  return t;
}

Tensor MakeF32(std::vector<std::int64_t> shape, std::span<const float> values) {
  Tensor t{DType::kF32, std::move(shape), std::vector<std::byte>(values.size() * 4)};
  std::memcpy(t.data.data(), values.data(), values.size() * 4);
  FEDLORA_CHECK_MSG(Validate(t).ok(), Validate(t).ToString());
  return t;
}

Tensor MakeF64(std::vector<std::int64_t> shape, std::span<const double> values) {
  Tensor t{DType::kF64, std::move(shape), std::vector<std::byte>(values.size() * 8)};
  std::memcpy(t.data.data(), values.data(), values.size() * 8);
  FEDLORA_CHECK_MSG(Validate(t).ok(), Validate(t).ToString());
  return t;
}

Tensor Zeros(DType dtype, std::vector<std::int64_t> shape) {
  Tensor t{dtype, std::move(shape), {}};
  t.data.assign(static_cast<std::size_t>(t.numel()) * ByteWidth(dtype), std::byte{0});
  return t;
}

bool AllFinite(const Tensor& t) {
  const std::byte* p = t.data.data();
  const std::size_t n = t.data.size() / ByteWidth(t.dtype);
  for (std::size_t i = 0; i < n; ++i) {
    switch (t.dtype) {
      case DType::kF32:
        if (!std::isfinite(Load<float>(p + 4 * i))) return false;
        break;
      case DType::kF64:
        if (!std::isfinite(Load<double>(p + 8 * i))) return false;
        break;
      case DType::kBF16:  // Exponent all ones means inf or NaN.
        if ((Load<std::uint16_t>(p + 2 * i) & 0x7F80) == 0x7F80) return false;
        break;
      case DType::kF16:
        if ((Load<std::uint16_t>(p + 2 * i) & 0x7C00) == 0x7C00) return false;
        break;
      case DType::kU32: return true;  // Integers are always finite.
    }
  }
  return true;
}

std::size_t PayloadBytes(const TensorMap& tensors) {
  std::size_t total = 0;
  for (const auto& [name, t] : tensors) total += t.data.size();
  return total;
}

}  // namespace fedlora
