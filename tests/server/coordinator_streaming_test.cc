// The round engine folds uploads as they arrive: the committed adapter must not depend on the
// order they arrived in, nor on a coordinator restart in the middle of the round.
#include <gtest/gtest.h>

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
using testing::kModules;
using testing::MakeHello;
using testing::TestPeer;

// Per-client values far apart in magnitude, so a running floating-point sum depends on the
// order (the test checks that it does), and example counts that weight them differently.
struct Profile {
  std::string name;
  std::uint64_t examples;
  float value;
};
const std::vector<Profile> kClients = {
    {"a", 3, 1.0e7f}, {"b", 7, 3.3e-3f}, {"c", 11, -1.0e7f}, {"d", 13, 7.7e-4f}};

wire::Update UploadOf(const Profile& p, const wire::RoundTask& task) {
  wire::Update u;
  u.round = task.round;
  u.ticket = task.ticket;
  u.num_samples = 16;
  u.num_examples = p.examples;
  u.metrics = {{"train_loss", 2.0}};
  for (const auto& [name, t] : task.tensors) {
    std::vector<double> v(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = p.value * static_cast<float>(1 + i % 5);
    u.tensors[name] = FromDoubles(DType::kF32, t.shape, v);
  }
  return u;
}

class CoordinatorStreamingTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("streaming");
    config_.robust.norm_bound = 0;  // The values are deliberately huge.
  }

  void Start() {
    const Status started = LaunchOnInproc("streaming");
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  // Joins every client of `clients`, then uploads in the order of `order` (indices into
  // `clients`), each after the previous one's Ack; waits for the round to commit.
  void RunRound(const std::vector<Profile>& clients, const std::vector<std::size_t>& order) {
    std::vector<std::unique_ptr<TestPeer>> peers;
    for (const Profile& p : clients) {
      peers.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
      peers.back()->Join(MakeHello(p.name, kDigest, kModules));
    }
    std::vector<wire::RoundTask> tasks;
    for (auto& peer : peers) tasks.push_back(peer->Expect<wire::RoundTask>());
    for (std::size_t k : order) {
      peers[k]->Send(UploadOf(clients[k], tasks[k]));
      peers[k]->Expect<wire::Ack>();
    }
    peers[order.front()]->Expect<wire::Bye>();
    ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
    coordinator_.reset();
  }

  TensorMap Committed() const {
    return CheckpointStore::Open(dir_).value().LoadLatest().value()->state.adapter;
  }
  void Forget() { std::filesystem::remove_all(dir_); }
};

TEST_F(CoordinatorStreamingTest, TheCommittedAdapterIsBitIdenticalWhateverOrderUploadsArriveIn) {
  // The data is order-sensitive: a plain running sum in double gives different bits.
  const auto running = [](const std::vector<std::size_t>& order) {
    double s = 0;
    for (std::size_t k : order) {
      s += static_cast<double>(kClients[k].examples) * static_cast<double>(kClients[k].value);
    }
    return s;
  };
  ASSERT_NE(running({0, 1, 2, 3}), running({3, 1, 0, 2}));

  config_.round.min_clients = 4;
  config_.round.quorum = 4;
  Start();
  RunRound(kClients, {0, 1, 2, 3});
  const TensorMap forward = Committed();
  Forget();
  Start();
  RunRound(kClients, {3, 1, 0, 2});
  const TensorMap shuffled = Committed();
  ASSERT_FALSE(forward.empty());
  EXPECT_EQ(forward, shuffled);
}

TEST_F(CoordinatorStreamingTest, ARestartInTheMiddleOfARoundCommitsTheSameAdapterAsNoRestart) {
  config_.round.min_clients = 3;
  config_.round.quorum = 3;
  const std::vector<Profile> clients(kClients.begin(), kClients.begin() + 3);
  Start();
  RunRound(clients, {0, 1, 2});
  const TensorMap uninterrupted = Committed();
  Forget();

  Start();
  {
    // b and a upload and are acknowledged; the coordinator stops before c answers.
    std::vector<std::unique_ptr<TestPeer>> peers;
    for (const Profile& p : clients) {
      peers.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
      peers.back()->Join(MakeHello(p.name, kDigest, kModules));
    }
    std::vector<wire::RoundTask> tasks;
    for (auto& peer : peers) tasks.push_back(peer->Expect<wire::RoundTask>());
    for (std::size_t k : {1u, 0u}) {
      peers[k]->Send(UploadOf(clients[k], tasks[k]));
      peers[k]->Expect<wire::Ack>();
    }
    coordinator_->Stop();
    EXPECT_EQ(FinishCoordinator().code(), StatusCode::kCancelled);
    coordinator_.reset();
  }
  Start();
  std::vector<std::unique_ptr<TestPeer>> peers;
  for (const Profile& p : clients) {
    peers.push_back(std::make_unique<TestPeer>(context_, coordinator_->endpoint()));
    EXPECT_EQ(peers.back()->Join(MakeHello(p.name, kDigest, kModules)).current_round, 1u);
  }
  // Only c is asked again: the uploads of a and b were folded back in from their files.
  const wire::RoundTask task = peers[2]->Expect<wire::RoundTask>();
  peers[2]->Send(UploadOf(clients[2], task));
  peers[2]->Expect<wire::Ack>();
  peers[0]->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  coordinator_.reset();
  EXPECT_EQ(Committed(), uninterrupted);
}

}  // namespace
}  // namespace fedlora::server
