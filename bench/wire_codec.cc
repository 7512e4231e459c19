// bench/wire_codec — what a large adapter upload costs on the wire path.
//
// Encodes and decodes an Update carrying `--mb` megabytes of f32 factors (64 tensors), which
// includes SHA-256 of every tensor on both sides and the one copy each side makes, and compares
// with a baseline measured in the same run: copying the same bytes twice (the floor for any codec
// that hands the receiver an owned copy). Prints one line:
//   bytes=<n> encode_decode_gbps=<x> baseline_gbps=<y> ratio=<y/x>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/wire/codec.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fedlora;
  double megabytes = 64;
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--mb") megabytes = std::atof(argv[i + 1]);
    if (std::string(argv[i]) == "--repeats") repeats = std::atoi(argv[i + 1]);
  }
  constexpr int kTensors = 64;
  const auto per_tensor = static_cast<std::int64_t>(megabytes * 1e6 / 4 / kTensors);
  wire::Update update;
  update.round = 1;
  update.num_samples = update.num_examples = 1;
  for (int t = 0; t < kTensors; ++t) {
    std::vector<float> values(static_cast<std::size_t>(per_tensor));
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 977) * 1e-3f;
    update.tensors["layer" + std::to_string(t) + ".lora_A.weight"] = MakeF32({per_tensor}, values);
  }
  const wire::Envelope envelope{wire::kProtocolVersion, 1, 1, update};
  const std::size_t bytes = PayloadBytes(update.tensors);
  wire::DecodeLimits limits;
  limits.max_message_bytes = bytes + (1 << 20);

  double codec_best = 1e9, baseline_best = 1e9;
  std::size_t checksum = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    const wire::EncodedMessage encoded = wire::Encode(envelope);
    // What the transport does: one copy into the outgoing frames...
    std::vector<std::vector<std::byte>> frames;
    for (auto f : encoded.frames()) frames.emplace_back(f.begin(), f.end());
    std::vector<std::span<const std::byte>> views(frames.begin(), frames.end());
    Result<wire::Envelope> decoded = wire::Decode(views, limits);
    const auto t1 = Clock::now();
    if (!decoded.ok()) {
      std::fprintf(stderr, "decode failed: %s\n", decoded.status().ToString().c_str());
      return 1;
    }
    checksum += std::get<wire::Update>(decoded->body).tensors.size();
    codec_best = std::min(codec_best, Seconds(t0, t1));

    const auto b0 = Clock::now();
    std::vector<std::vector<std::byte>> copy1, copy2;
    for (const auto& [name, t] : update.tensors) copy1.emplace_back(t.data.begin(), t.data.end());
    for (const auto& c : copy1) copy2.emplace_back(c.begin(), c.end());
    const auto b1 = Clock::now();
    checksum += copy2.size();
    baseline_best = std::min(baseline_best, Seconds(b0, b1));
  }
  const double codec_gbps = static_cast<double>(bytes) / codec_best / 1e9;
  const double baseline_gbps = static_cast<double>(bytes) / baseline_best / 1e9;
  std::printf("bytes=%zu encode_decode_gbps=%.2f baseline_gbps=%.2f ratio=%.2f (checksum %zu)\n",
              bytes, codec_gbps, baseline_gbps, baseline_gbps / codec_gbps, checksum);
  return 0;
}
