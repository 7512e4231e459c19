// codec_proto.h — private to common/wire/codec*.cc: the helpers both directions of the codec
// share, over the generated Cap'n Proto types. Nothing else may include this header (it pulls in
// the generated code that codec.h keeps out of the rest of the program).
#pragma once

#include <optional>
#include <string>

#include "common/status.h"
#include "common/tensor.h"
#include "common/wire/messages.h"
#include "proto/fedlora.capnp.h"

namespace fedlora::wire::codec_internal {

inline Status DecodeError(ErrorCode code, StatusCode status_code, std::string message) {
  return Status(status_code, std::move(message), static_cast<std::uint32_t>(code));
}

inline kj::StringPtr Text(const std::string& s) { return kj::StringPtr(s.c_str(), s.size()); }
inline std::string Str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

inline proto::DType ToProto(DType d) {
  switch (d) {
    case DType::kF32:
      return proto::DType::F32;
    case DType::kBF16:
      return proto::DType::BF16;
    case DType::kF16:
      return proto::DType::F16;
    case DType::kF64:
      return proto::DType::F64;
    case DType::kU32:
      return proto::DType::U32;
  }
  return proto::DType::UNSPECIFIED;
}

inline std::optional<DType> FromProto(proto::DType d) {
  switch (d) {
    case proto::DType::F32:
      return DType::kF32;
    case proto::DType::BF16:
      return DType::kBF16;
    case proto::DType::F16:
      return DType::kF16;
    case proto::DType::F64:
      return DType::kF64;
    case proto::DType::U32:
      return DType::kU32;
    default:
      return std::nullopt;  // unspecified, or a value from a newer schema.
  }
}

}  // namespace fedlora::wire::codec_internal
