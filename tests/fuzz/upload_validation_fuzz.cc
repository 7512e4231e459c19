// upload_validation_fuzz.cc — fuzzes the coordinator's check of an uploaded Update against the
// task it answers: the wire decoder, then ValidateUpload (server/admission.h, the function
// coordinator_uploads.cc calls before a strategy sees an upload, fresh or restored).
//
// Input: one flags byte, then the message frames in fuzz_input.h's layout (as
// wire_decode_fuzz.cc). Flags: bit 0 = require digests; bits 1-2 pick
// strategy.max_examples_per_client from {1, 1000, 2^20, 2^64-1} (the config allows any >= 1).
// An Update that decodes is validated against both fixed tasks of upload_tasks.h.
//
// Checks: no crash, no sanitizer report; every refusal is kInvalidArgument with a
// wire::ErrorCode; an accepted upload has exactly the task's tensor names with the task's dtype
// and finite values (the property the strategies rely on). An accepted upload then goes through
// norm bounding (server/robust/update_norm.h) as the coordinator does: its norm is finite, and
// clipped to a bound of 1 every value lies between the task's value and the uploaded one.
#include <cstddef>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <variant>
#include <vector>

#include "common/wire/codec.h"
#include "server/admission.h"
#include "server/robust/update_norm.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/upload_tasks.h"

namespace {

using namespace fedlora;

void Check(const wire::Update& update, const server::ClientTask& task, std::uint64_t max_examples) {
  const Status s = server::ValidateUpload(update, task, max_examples);
  fuzz::Report("ValidateUpload", s);
  if (!s.ok()) {
    fuzz::Require(s.code() == StatusCode::kInvalidArgument, "refusals are kInvalidArgument");
    fuzz::Require(wire::DecodeErrorCode(s) != wire::ErrorCode::kInternal,
                  "refusals carry a wire::ErrorCode");
    return;
  }
  fuzz::Require(update.tensors.size() == task.expected_upload.size(), "accepted: same tensor count");
  for (const auto& [name, t] : update.tensors) {
    const auto it = task.expected_upload.find(name);
    fuzz::Require(it != task.expected_upload.end(), "accepted: only expected tensors");
    fuzz::Require(t.dtype == it->second.spec.dtype, "accepted: the expected dtype");
    fuzz::Require(AllFinite(t), "accepted: finite values");
  }
  fuzz::Require(update.num_samples > 0 && update.num_examples > 0, "accepted: positive counts");

  server::ClientUpdate accepted{"fuzz", update.num_samples, update.num_examples, {},
                                update.tensors};
  const double norm = server::UpdateNorm(accepted, task);
  fuzz::Require(std::isfinite(norm) && norm >= 0, "the norm of an accepted upload is finite");
  if (norm <= 1.0) return;
  server::ScaleChange(accepted, task, 1.0 / norm);
  for (const auto& [name, t] : accepted.tensors) {
    fuzz::Require(AllFinite(t), "clipped: finite values");
    const std::vector<double> clipped = ToDoubles(t), sent = ToDoubles(update.tensors.at(name));
    // The starting point of a tensor the task sent with the same shape (a pruned rank starts
    // from a leading block of it: not checked here), else zero.
    const auto start = task.tensors.find(name);
    if (start != task.tensors.end() && start->second.shape != t.shape) continue;
    const std::vector<double> from = start != task.tensors.end()
                                         ? ToDoubles(start->second)
                                         : std::vector<double>(clipped.size(), 0.0);
    // Up to the rounding of the upload's dtype (the task's value may not be representable in it).
    const double ulp = t.dtype == DType::kF32 ? 1e-6 : t.dtype == DType::kF64 ? 1e-14 : 1e-2;
    for (std::size_t i = 0; i < clipped.size(); ++i) {
      const double slack = ulp * std::max(std::abs(from[i]), std::abs(sent[i])) + 1e-7;
      fuzz::Require(clipped[i] >= std::min(from[i], sent[i]) - slack &&
                        clipped[i] <= std::max(from[i], sent[i]) + slack,
                    "clipped: each value between the task's and the upload's");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::UploadTasks tasks = fuzz::MakeUploadTasks();
  if (size == 0) return 0;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const std::uint8_t flags = data[0];
  wire::DecodeLimits limits;
  limits.require_digests = (flags & 1) != 0;
  constexpr std::uint64_t kMaxExamples[] = {1, 1000, std::uint64_t{1} << 20,
                                            std::numeric_limits<std::uint64_t>::max()};
  const std::uint64_t max_examples = kMaxExamples[(flags >> 1) & 3];

  const std::vector<std::span<const std::byte>> frames = fuzz::SplitParts(input.subspan(1), 64);
  Result<wire::Envelope> decoded = wire::Decode(frames, limits);
  fuzz::Report("Decode", decoded);
  if (!decoded.ok()) return 0;
  const auto* update = std::get_if<wire::Update>(&decoded.value().body);
  if (update == nullptr) return 0;
  Check(*update, tasks.plain, max_examples);
  Check(*update, tasks.shrinkable, max_examples);
  return 0;
}
