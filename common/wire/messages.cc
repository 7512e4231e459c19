#include "common/wire/messages.h"

#include <algorithm>

namespace fedlora::wire {

bool ValidClientName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
}

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kUnspecified:
      return "UNSPECIFIED";
    case ErrorCode::kMalformedEnvelope:
      return "MALFORMED_ENVELOPE";
    case ErrorCode::kVersionMismatch:
      return "VERSION_MISMATCH";
    case ErrorCode::kUnknownMessageKind:
      return "UNKNOWN_MESSAGE_KIND";
    case ErrorCode::kFrameCountMismatch:
      return "FRAME_COUNT_MISMATCH";
    case ErrorCode::kTensorFrameMismatch:
      return "TENSOR_FRAME_MISMATCH";
    case ErrorCode::kDigestMismatch:
      return "DIGEST_MISMATCH";
    case ErrorCode::kTensorDtypeMismatch:
      return "TENSOR_DTYPE_MISMATCH";
    case ErrorCode::kTensorShapeMismatch:
      return "TENSOR_SHAPE_MISMATCH";
    case ErrorCode::kBaseModelMismatch:
      return "BASE_MODEL_MISMATCH";
    case ErrorCode::kMessageTooLarge:
      return "MESSAGE_TOO_LARGE";
    case ErrorCode::kUnexpectedMessage:
      return "UNEXPECTED_MESSAGE";
    case ErrorCode::kSessionMismatch:
      return "SESSION_MISMATCH";
    case ErrorCode::kSequenceReplay:
      return "SEQUENCE_REPLAY";
    case ErrorCode::kStaleRound:
      return "STALE_ROUND";
    case ErrorCode::kNotSelected:
      return "NOT_SELECTED";
    case ErrorCode::kNonFiniteTensor:
      return "NON_FINITE_TENSOR";
    case ErrorCode::kInvalidField:
      return "INVALID_FIELD";
    case ErrorCode::kDuplicateClient:
      return "DUPLICATE_CLIENT";
    case ErrorCode::kShuttingDown:
      return "SHUTTING_DOWN";
    case ErrorCode::kInternal:
      return "INTERNAL";
    case ErrorCode::kBaseVersionMismatch:
      return "BASE_VERSION_MISMATCH";
    case ErrorCode::kTaskDeclined:
      return "TASK_DECLINED";
    case ErrorCode::kNotAuthorized:
      return "NOT_AUTHORIZED";
    case ErrorCode::kTaskMismatch:
      return "TASK_MISMATCH";
    case ErrorCode::kUpdateNormExceeded:
      return "UPDATE_NORM_EXCEEDED";
    case ErrorCode::kChunkMismatch:
      return "CHUNK_MISMATCH";
    case ErrorCode::kSecAggMismatch:
      return "SECAGG_MISMATCH";
    case ErrorCode::kPrivacyMismatch:
      return "PRIVACY_MISMATCH";
  }
  return "UNKNOWN";
}

std::string_view AdapterModeName(AdapterMode mode) {
  switch (mode) {
    case AdapterMode::kStandard:
      return "standard";
    case AdapterMode::kSketched:
      return "sketched";
    case AdapterMode::kLoraSb:
      return "lora_sb";
    case AdapterMode::kLoraSbInit:
      return "lora_sb_init";
  }
  return "unknown";
}

std::string_view BodyName(const Body& body) {
  struct Namer {
    std::string_view operator()(const Hello&) const { return "hello"; }
    std::string_view operator()(const Welcome&) const { return "welcome"; }
    std::string_view operator()(const RoundTask&) const { return "roundTask"; }
    std::string_view operator()(const Update&) const { return "update"; }
    std::string_view operator()(const Ack&) const { return "ack"; }
    std::string_view operator()(const Heartbeat&) const { return "heartbeat"; }
    std::string_view operator()(const EvalTask&) const { return "evalTask"; }
    std::string_view operator()(const EvalResult&) const { return "evalResult"; }
    std::string_view operator()(const Error&) const { return "error"; }
    std::string_view operator()(const Bye&) const { return "bye"; }
    std::string_view operator()(const Chunk&) const { return "chunk"; }
    std::string_view operator()(const SecAgg&) const { return "secAgg"; }
  };
  return std::visit(Namer{}, body);
}

std::string_view SecAggStageName(const SecAgg& message) {
  static constexpr std::string_view kNames[] = {"keys", "roster", "shares", "unmask", "reveal"};
  return kNames[message.stage.index()];
}

const TensorMap* TensorsOf(const Body& body) {
  if (const auto* m = std::get_if<RoundTask>(&body)) return &m->tensors;
  if (const auto* m = std::get_if<Update>(&body)) return &m->tensors;
  if (const auto* m = std::get_if<EvalTask>(&body)) return &m->tensors;
  return nullptr;
}

TensorMap* TensorsOf(Body& body) {
  return const_cast<TensorMap*>(TensorsOf(static_cast<const Body&>(body)));
}

}  // namespace fedlora::wire
