// A 1 GiB upload through a real coordinator over TCP loopback, in 8 MiB chunks: larger than
// four times max_message_bytes, spooled to disk as it arrives, folded, committed. The task (the
// 512 MiB global adapter) comes down in chunks too.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "server/checkpoint_store.h"
#include "server/coordinator.h"
#include "tests/server/coordinator_harness.h"
#include "tests/server/test_peer.h"

namespace fedlora::server {
namespace {

using testing::kDigest;
using testing::MakeHello;
using testing::TestPeer;

constexpr std::uint64_t kMiB = 1 << 20;

class LargeUploadTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override { SetUpHarness("large_upload"); }
};

TEST_F(LargeUploadTest, AOneGibibyteUploadGoesThroughInChunksAndIsFolded) {
  // Rank 512 on eight 16384 x 16384 projections: 2^27 adapter parameters, so the f32 global
  // adapter is 512 MiB and an f64 upload 1 GiB (f64 keeps the exact accumulator at 2 GiB).
  std::vector<wire::ModuleInfo> modules;
  std::vector<std::string> targets;
  for (int i = 0; i < 8; ++i) {
    modules.push_back({"model.layers.0.proj_" + std::to_string(i), 16384, 16384});
    targets.push_back("proj_" + std::to_string(i));
  }
  config_.lora = {.rank = 512, .alpha = 16, .targets = targets};
  config_.train.upload_dtype = DType::kF64;
  config_.round.min_clients = 1;
  config_.transport.bind = "tcp://127.0.0.1:*";
  config_.transport.max_message_bytes = 256 * kMiB;
  config_.transport.chunk_bytes = 8 * kMiB;
  config_.robust.norm_bound = 0;
  config_.export_config.peft_every_round = false;  // Only after the round (512 MiB to write).
  ASSERT_TRUE(LaunchCoordinator(system_clock_).ok());
  // Round 0's checkpoint (512 MiB, fsynced) comes before the task: on a loaded 2-core machine
  // that alone has taken 11 s, so the waits below allow minutes, not the default 30 s.
  constexpr std::chrono::seconds kSlow{300};

  TestPeer peer(context_, coordinator_->endpoint());
  peer.Join(MakeHello("big", kDigest, modules));
  wire::Update update;
  {
    const wire::RoundTask task = peer.Expect<wire::RoundTask>(kSlow);
    EXPECT_EQ(peer.chunked_received(), 1);
    EXPECT_EQ(PayloadBytes(task.tensors), 512 * kMiB);
    update.round = task.round;
    update.ticket = task.ticket;
    update.num_samples = 16;
    update.num_examples = 100;
    update.metrics = {{"train_loss", 2.0}};
    for (const auto& [name, t] : task.tensors) {  // Each value + 0.5, exactly representable.
      Tensor u{DType::kF64, t.shape, std::vector<std::byte>(t.data.size() * 2)};
      const auto* in = reinterpret_cast<const float*>(t.data.data());
      auto* out = reinterpret_cast<double*>(u.data.data());
      for (std::int64_t i = 0; i < t.numel(); ++i) out[i] = double{in[i]} + 0.5;
      update.tensors.emplace(name, std::move(u));
    }
  }
  ASSERT_EQ(PayloadBytes(update.tensors), 1024 * kMiB);
  peer.SendChunked(update, config_.transport.chunk_bytes);
  peer.Expect<wire::Ack>(kSlow);
  peer.Expect<wire::Bye>(kSlow);
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const CoordinatorCounters c = coordinator_->counters();
  EXPECT_EQ(c.chunks_in, 128u);
  EXPECT_EQ(c.updates_accepted, 1u);
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/incoming"));
  coordinator_.reset();

  // One client: the new global adapter is its upload, rounded to f32.
  const TensorMap global = CheckpointStore::Open(dir_).value().LoadLatest().value()->state.adapter;
  ASSERT_EQ(global.size(), update.tensors.size());
  for (const auto& [name, t] : global) {
    const Tensor& sent = update.tensors.at(name);
    const auto* g = reinterpret_cast<const float*>(t.data.data());
    const auto* s = reinterpret_cast<const double*>(sent.data.data());
    std::int64_t off = 0;
    for (std::int64_t i = 0; i < t.numel(); ++i) off += g[i] != static_cast<float>(s[i]);
    EXPECT_EQ(off, 0) << name;
  }
}

}  // namespace
}  // namespace fedlora::server
