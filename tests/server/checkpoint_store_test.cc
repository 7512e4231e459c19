#include "server/checkpoint_store.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/fs.h"

namespace fedlora::server {
namespace {

namespace stdfs = std::filesystem;

class CheckpointStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_ckpt_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    stdfs::remove_all(dir_);
  }
  void TearDown() override { stdfs::remove_all(dir_); }

  static Checkpoint Make(std::uint64_t round, float value) {
    Checkpoint cp;
    cp.round = round;
    cp.strategy = "fedavg";
    cp.layout = {"ab" + std::string(62, '0'), {{"model.layers.0.self_attn.q_proj", 4, 3}}};
    cp.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj"}};
    cp.state.round = round;
    cp.state.adapter["model.layers.0.self_attn.q_proj.lora_A.weight"] =
        MakeF32({2, 3}, std::vector<float>(6, value));
    cp.metrics_json = "{\"round\":" + std::to_string(round) + "}";
    return cp;
  }

  std::string dir_;
};

TEST_F(CheckpointStoreTest, CommittedCheckpointLoadsBackExactly) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  EXPECT_FALSE(store.LoadLatest().value().has_value());
  Checkpoint cp = Make(0, 1.0f);
  cp.state.extra["log.U"] = MakeF32({1}, std::vector<float>{2.0f});
  ASSERT_TRUE(store.Commit(cp).ok());
  ASSERT_TRUE(store.Commit(Make(1, 2.0f)).ok());
  const std::optional<Checkpoint> latest = store.LoadLatest().value();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->round, 1u);
  EXPECT_EQ(latest->state, Make(1, 2.0f).state);
  EXPECT_EQ(latest->layout, Make(1, 2.0f).layout);
  EXPECT_EQ(latest->lora, Make(1, 2.0f).lora);
  EXPECT_EQ(latest->metrics_json, "{\"round\":1}");
  EXPECT_EQ(store.Commit(Make(1, 3.0f)).code(), StatusCode::kAlreadyExists);
}

TEST_F(CheckpointStoreTest, CorruptNewestCheckpointFallsBackToThePreviousOne) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  ASSERT_TRUE(store.Commit(Make(1, 1.0f)).ok());
  ASSERT_TRUE(store.Commit(Make(2, 2.0f)).ok());
  {  // Flip bytes in round 2's adapter: the manifest digest no longer matches.
    std::fstream f(store.CheckpointDir(2) + "/global.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-2, std::ios::end);
    f.write("\x7f\x7f", 2);
  }
  const std::optional<Checkpoint> latest = store.LoadLatest().value();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->round, 1u);
}

TEST_F(CheckpointStoreTest, InterruptedCommitLeavesNoTraceAfterReopen) {
  {
    CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
    ASSERT_TRUE(store.Commit(Make(1, 1.0f)).ok());
  }
  ASSERT_TRUE(fs::MakeDirectories(dir_ + "/checkpoints/.staging-000002").ok());
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  EXPECT_FALSE(stdfs::exists(dir_ + "/checkpoints/.staging-000002"));
  EXPECT_EQ(store.LoadLatest().value()->round, 1u);
}

TEST_F(CheckpointStoreTest, SecondCoordinatorCannotOpenALockedStateDir) {
  CheckpointStore first = std::move(CheckpointStore::Open(dir_).value());
  const Result<CheckpointStore> second = CheckpointStore::Open(dir_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use"), std::string::npos);
}

TEST_F(CheckpointStoreTest, PersistedUploadsSurviveAReopenUntilTheirRoundCommits) {
  ClientUpdate u{"alice", 40, 120, {{"train_loss", 2.5}},
                 {{"w", MakeF32({2}, std::vector<float>{1, 2})}}};
  {
    CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
    wire::AdapterPlan plan;
    plan.modules.push_back({"m", 3, {0, 2, 5}});
    ASSERT_TRUE(store.PersistUpdate(3, PendingUpload{u, {"cpu", 1, 2, 3, 4.0, true}, plan}).ok());
    ClientUpdate b = u;
    b.client_id = "bob";
    ASSERT_TRUE(store.PersistUpdate(3, PendingUpload{b, {}, {}}).ok());
  }
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  const std::vector<PendingUpload> pending = store.LoadPending(3).value();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].update.client_id, "alice");
  EXPECT_EQ(pending[0].update.num_examples, 120u);
  EXPECT_EQ(pending[0].update.metrics.at("train_loss"), 2.5);
  EXPECT_EQ(pending[0].update.tensors, u.tensors);
  EXPECT_EQ(pending[0].capabilities.relative_speed, 4.0);
  EXPECT_TRUE(pending[0].capabilities.can_initialize);
  EXPECT_EQ(pending[0].plan.modules.at(0).sketch, (std::vector<std::uint32_t>{0, 2, 5}));
  EXPECT_TRUE(store.LoadPending(4).value().empty());
  ASSERT_TRUE(store.Commit(Make(3, 1.0f)).ok());
  EXPECT_TRUE(store.LoadPending(3).value().empty());
}

TEST_F(CheckpointStoreTest, MetricsGetOneLinePerRoundEvenAfterATornAppend) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  ASSERT_TRUE(store.AppendMetrics(1, "{\"round\":1}").ok());
  ASSERT_TRUE(store.AppendMetrics(1, "{\"round\":1}").ok());  // Idempotent.
  {
    std::ofstream f(store.MetricsPath(), std::ios::app);
    f << "{\"round\":2,\"trai";  // A crash mid-append.
  }
  ASSERT_TRUE(store.AppendMetrics(2, "{\"round\":2}").ok());
  EXPECT_EQ(store.MetricsRounds().value(), (std::vector<std::uint64_t>{1, 2}));
}

TEST_F(CheckpointStoreTest, KeepPrunesAllButTheNewestCheckpoints) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  for (std::uint64_t r = 0; r < 5; ++r) ASSERT_TRUE(store.Commit(Make(r, 1.0f), 2).ok());
  EXPECT_FALSE(stdfs::exists(store.CheckpointDir(2)));
  EXPECT_TRUE(stdfs::exists(store.CheckpointDir(3)));
  EXPECT_TRUE(stdfs::exists(store.CheckpointDir(4)));
}

TEST_F(CheckpointStoreTest, VerifyAllReportsEachCheckpointAndNamesTheDamagedFile) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  for (std::uint64_t r = 0; r < 3; ++r) ASSERT_TRUE(store.Commit(Make(r, 1.0f)).ok());
  {  // One flipped byte in round 1's metrics record: its manifest digest no longer matches.
    std::fstream f(store.CheckpointDir(1) + "/metrics.json",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.write("[", 1);
  }
  // Runs next to the store that holds the lock, and moves nothing.
  const std::vector<CheckpointCheck> checks = CheckpointStore::VerifyAll(dir_).value();
  ASSERT_EQ(checks.size(), 3u);
  for (std::uint64_t r = 0; r < 3; ++r) EXPECT_EQ(checks[r].round, r);
  EXPECT_TRUE(checks[0].status.ok()) << checks[0].status.ToString();
  EXPECT_EQ(checks[1].status.code(), StatusCode::kDataLoss);
  EXPECT_NE(checks[1].status.message().find("metrics.json"), std::string::npos)
      << checks[1].status.message();
  EXPECT_TRUE(checks[2].status.ok()) << checks[2].status.ToString();
  EXPECT_TRUE(stdfs::exists(store.CheckpointDir(1)));
}

TEST_F(CheckpointStoreTest, VerifyAllCountsACheckpointSetAsideAtStartAsDamaged) {
  CheckpointStore store = std::move(CheckpointStore::Open(dir_).value());
  ASSERT_TRUE(store.Commit(Make(1, 1.0f)).ok());
  ASSERT_TRUE(store.Commit(Make(2, 2.0f)).ok());
  {
    std::fstream f(store.CheckpointDir(2) + "/global.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.write("\x7f", 1);
  }
  EXPECT_EQ(store.LoadLatest().value()->round, 1u);  // Sets round 2 aside.
  const std::vector<CheckpointCheck> checks = CheckpointStore::VerifyAll(dir_).value();
  ASSERT_EQ(checks.size(), 2u);
  EXPECT_TRUE(checks[0].status.ok());
  EXPECT_EQ(checks[1].round, 2u);
  EXPECT_EQ(checks[1].status.code(), StatusCode::kDataLoss);
  EXPECT_EQ(CheckpointStore::VerifyAll(dir_ + "/nowhere").status().code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedlora::server
