// Chunked transfer through a real coordinator: uploads and tasks larger than chunk_bytes travel
// in chunks; a lost, reordered or corrupted chunk is refused naming the tensor and offset and
// leaves nothing behind; the whole upload sent again is accepted; a client that leaves or
// reconnects mid-upload leaves no partial state.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
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

// Rank 4 on q (64 x 512) and v (32 x 512): the upload's tensors in frame (name) order are
// q.lora_A 8192 bytes, q.lora_B 1024, v.lora_A 8192, v.lora_B 512 = 17920 bytes, so 4096-byte
// chunks number 5, and chunk 2 spans q.lora_B and v.lora_A.
const std::vector<wire::ModuleInfo> kWideModules = {{"model.layers.0.self_attn.q_proj", 64, 512},
                                                    {"model.layers.0.self_attn.v_proj", 32, 512}};
constexpr std::uint64_t kChunk = 4096;
const std::string kQA = "model.layers.0.self_attn.q_proj.lora_A.weight";

class CoordinatorChunksTest : public testing::CoordinatorHarness {
 protected:
  void SetUp() override {
    SetUpHarness("chunks");
    config_.lora.rank = 4;
    config_.round.min_clients = 1;
    config_.transport.chunk_bytes = kChunk;
  }
  void Start(const Clock* clock = nullptr) {
    const Status started = LaunchOnInproc("chunks", clock);
    ASSERT_TRUE(started.ok()) << started.ToString();
  }
  std::unique_ptr<TestPeer> Join(const std::string& name) {
    auto peer = std::make_unique<TestPeer>(context_, coordinator_->endpoint());
    peer->Join(MakeHello(name, kDigest, kWideModules));
    return peer;
  }
  std::size_t IncomingFiles() const {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_ + "/incoming")) {
      (void)e;
      ++n;
    }
    return n;
  }
  TensorMap Committed() const {
    return CheckpointStore::Open(dir_).value().LoadLatest().value()->state.adapter;
  }
  // Waits (bounded) until the coordinator's counters satisfy `done`.
  template <typename Pred>
  bool WaitForCounters(Pred done) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done(coordinator_->counters())) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      std::this_thread::yield();
    }
    return true;
  }
};

TEST_F(CoordinatorChunksTest, AnUploadInChunksCommitsTheSameAdapterAsTheSameUploadInOneMessage) {
  config_.transport.chunk_bytes = 32 << 10;  // First run: nothing is chunked.
  Start();
  {
    auto peer = Join("alice");
    const wire::RoundTask task = peer->Expect<wire::RoundTask>();
    EXPECT_EQ(peer->chunked_received(), 0);
    peer->Send(Answer(task, 0.25f, false));
    peer->Expect<wire::Ack>();
    peer->Expect<wire::Bye>();
  }
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  coordinator_.reset();
  const TensorMap whole = Committed();
  std::filesystem::remove_all(dir_);

  config_.transport.chunk_bytes = kChunk;
  Start();
  {
    auto peer = Join("alice");
    const wire::RoundTask task = peer->Expect<wire::RoundTask>();
    EXPECT_EQ(peer->chunked_received(), 1) << "the 17920-byte task travels in chunks";
    peer->SendChunked(Answer(task, 0.25f, false), kChunk);
    peer->Expect<wire::Ack>();
    peer->Expect<wire::Bye>();
  }
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  EXPECT_EQ(coordinator_->counters().chunks_in, 5u);
  EXPECT_EQ(IncomingFiles(), 0u);
  coordinator_.reset();
  EXPECT_EQ(Committed(), whole);
}

TEST_F(CoordinatorChunksTest,
       AReorderedChunkIsRefusedNamingTheTensorAndOffsetThenTheResentUploadIsAccepted) {
  Start();
  auto peer = Join("alice");
  const wire::RoundTask task = peer->Expect<wire::RoundTask>();
  const wire::Update update = Answer(task, 0.25f, false);
  const std::uint64_t head = peer->SendChunked(update, kChunk, {1, 0, 2, 3, 4});
  const wire::Error error = peer->Expect<wire::Error>();
  EXPECT_EQ(error.code, wire::ErrorCode::kChunkMismatch);
  EXPECT_EQ(error.ref_sequence, head);
  EXPECT_NE(error.message.find("chunk 1 (tensor '" + kQA + "' at byte 4096 of 8192)"),
            std::string::npos)
      << error.message;
  EXPECT_NE(error.message.find("chunk 0 (tensor '" + kQA + "' at byte 0 of 8192) was expected"),
            std::string::npos)
      << error.message;
  EXPECT_EQ(IncomingFiles(), 0u) << "a void transfer leaves no spool behind";
  peer->SendChunked(update, kChunk);  // The whole upload again, in order.
  peer->Expect<wire::Ack>();
  peer->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const CoordinatorCounters c = coordinator_->counters();
  EXPECT_EQ(c.transfers_voided, 1u);
  EXPECT_EQ(c.chunks_discarded, 4u) << "the rest of the void transfer, dropped without reply";
  EXPECT_EQ(c.updates_accepted, 1u);
  EXPECT_NE(MetricsLines().at(1).find("\"CHUNK_MISMATCH\":1"), std::string::npos)
      << MetricsLines().at(1);
}

TEST_F(CoordinatorChunksTest, ALostChunkIsRefusedNamingWhereTheMissingBytesBelong) {
  Start();
  auto peer = Join("alice");
  const wire::RoundTask task = peer->Expect<wire::RoundTask>();
  peer->SendChunked(Answer(task, 0.25f, false), kChunk, {0, 2, 3, 4});
  const wire::Error error = peer->Expect<wire::Error>();
  EXPECT_EQ(error.code, wire::ErrorCode::kChunkMismatch);
  // Chunk 2 starts at byte 8192: all of q.lora_B (at 8192) then v.lora_A.
  EXPECT_NE(error.message.find("chunk 2 (tensor 'model.layers.0.self_attn.q_proj.lora_B.weight' "
                               "at byte 0 of 1024) arrived where chunk 1 (tensor '" +
                               kQA + "' at byte 4096 of 8192) was expected"),
            std::string::npos)
      << error.message;
  EXPECT_EQ(IncomingFiles(), 0u);
}

TEST_F(CoordinatorChunksTest, ACorruptedChunkIsADigestMismatchNamingTheTensor) {
  Start();
  auto peer = Join("alice");
  const wire::RoundTask task = peer->Expect<wire::RoundTask>();
  const wire::Update update = Answer(task, 0.25f, false);
  peer->SendChunked(update, kChunk, {}, /*corrupt=*/1u);
  const wire::Error error = peer->Expect<wire::Error>();
  EXPECT_EQ(error.code, wire::ErrorCode::kDigestMismatch);
  EXPECT_NE(error.message.find("tensor '" + kQA + "'"), std::string::npos) << error.message;
  EXPECT_EQ(IncomingFiles(), 0u);
  peer->SendChunked(update, kChunk);
  peer->Expect<wire::Ack>();
}

TEST_F(CoordinatorChunksTest, AHeadAnnouncingTheWrongTensorsIsRefusedBeforeAnyChunkIsStored) {
  Start();
  auto peer = Join("alice");
  const wire::RoundTask task = peer->Expect<wire::RoundTask>();
  wire::Update update = Answer(task, 0.25f, false);
  update.tensors[kQA] = Zeros(DType::kF32, {4, 256});
  peer->SendChunked(update, kChunk);
  const wire::Error error = peer->Expect<wire::Error>();
  EXPECT_EQ(error.code, wire::ErrorCode::kTensorShapeMismatch);
  EXPECT_NE(error.message.find(kQA), std::string::npos) << error.message;
  EXPECT_EQ(IncomingFiles(), 0u);
  // Every chunk of the refused transfer is dropped without another reply.
  ASSERT_TRUE(
      WaitForCounters([](const CoordinatorCounters& c) { return c.chunks_discarded == 4; }));
  EXPECT_EQ(coordinator_->counters().chunks_in, 4u);
  EXPECT_EQ(coordinator_->counters().protocol_errors, 1u);
}

TEST_F(CoordinatorChunksTest, AClientThatReconnectsMidUploadLeavesNothingOfThePartialUpload) {
  Start();
  auto peer = Join("alice");
  const wire::RoundTask task = peer->Expect<wire::RoundTask>();
  const wire::Update update = Answer(task, 0.25f, false);
  peer->SendChunked(update, kChunk, {0, 1});  // Two of five chunks, then a new connection.
  peer->Join(MakeHello("alice", kDigest, kWideModules));
  // The Welcome is sent after the coordinator handled the Hello: the partial upload is gone.
  EXPECT_EQ(IncomingFiles(), 0u);
  EXPECT_EQ(coordinator_->counters().transfers_voided, 1u);
  EXPECT_EQ(coordinator_->counters().updates_accepted, 0u);
  const wire::RoundTask again = peer->Expect<wire::RoundTask>();  // Its task, sent again.
  peer->SendChunked(Answer(again, 0.25f, false), kChunk);
  peer->Expect<wire::Ack>();
  peer->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

TEST_F(CoordinatorChunksTest, AClientThatLeavesMidUploadLeavesNoSpoolAndTheRoundGoesOn) {
  config_.round.min_clients = 2;
  config_.round.quorum = 1;
  Start();
  auto alice = Join("alice");
  auto bob = Join("bob");
  const wire::RoundTask alice_task = alice->Expect<wire::RoundTask>();
  const wire::RoundTask bob_task = bob->Expect<wire::RoundTask>();
  alice->SendChunked(Answer(alice_task, 0.25f, false), kChunk, {0, 1});
  alice->Send(wire::Bye{"leaving mid-upload"});
  ASSERT_TRUE(
      WaitForCounters([](const CoordinatorCounters& c) { return c.transfers_voided == 1; }));
  EXPECT_EQ(IncomingFiles(), 0u);
  bob->SendChunked(Answer(bob_task, 0.5f, false), kChunk);
  bob->Expect<wire::Ack>();
  bob->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
  const std::string round1 = MetricsLines().at(1);
  EXPECT_NE(round1.find("\"clients_reported\":1"), std::string::npos) << round1;
  EXPECT_NE(round1.find("\"weights\":{\"bob\":1.0}"), std::string::npos) << round1;
}

// A client that keeps a transfer open past the deadline, while another client's upload meets the
// quorum: the partial upload is discarded with its round, its spool removed, the client told.
TEST_F(CoordinatorChunksTest, APartialUploadIsDiscardedWhenItsRoundMovesOn) {
  config_.rounds = 2;
  config_.round.min_clients = 2;
  config_.round.quorum = 1;
  FakeClock& clock = fake_clock_;
  Start(&clock);
  auto alice = Join("alice");
  auto bob = Join("bob");
  const wire::RoundTask alice_task = alice->Expect<wire::RoundTask>();
  const wire::RoundTask bob_task = bob->Expect<wire::RoundTask>();
  const std::uint64_t transfer =
      alice->SendChunked(Answer(alice_task, 0.25f, false), kChunk, {0, 1});
  ASSERT_TRUE(WaitForCounters([](const CoordinatorCounters& c) { return c.chunks_in == 2; }));
  EXPECT_EQ(IncomingFiles(), 1u);
  bob->Send(Answer(bob_task, 0.5f, false));
  bob->Expect<wire::Ack>();
  // The deadline passes with alice's upload incomplete: round 1 commits with bob's; round 2 begins.
  clock.Advance(std::chrono::milliseconds(config_.round.timeout_ms + 1));
  coordinator_->Wake();
  bool told = false, tasked = false;
  while (!told || !tasked) {
    wire::Envelope env = alice->Next();
    if (const auto* error = std::get_if<wire::Error>(&env.body)) {
      EXPECT_EQ(error->code, wire::ErrorCode::kStaleRound) << error->message;
      EXPECT_EQ(error->ref_sequence, transfer);
      told = true;
    } else if (const auto* task = std::get_if<wire::RoundTask>(&env.body)) {
      EXPECT_EQ(task->round, 2u);
      tasked = true;
    } else {
      ADD_FAILURE() << "unexpected " << wire::BodyName(env.body);
      break;
    }
  }
  EXPECT_EQ(IncomingFiles(), 0u);
  EXPECT_EQ(coordinator_->counters().transfers_voided, 1u);
}

// A client that could not put its task together (a chunk went missing on the way) says so, and
// gets the same task again, rather than failing the round.
TEST_F(CoordinatorChunksTest, ATaskWhoseChunksTheClientCouldNotAssembleIsSentAgain) {
  Start();
  auto peer = Join("alice");
  const wire::Envelope first = peer->Next();
  ASSERT_TRUE(std::holds_alternative<wire::RoundTask>(first.body));
  const wire::RoundTask& task = std::get<wire::RoundTask>(first.body);
  peer->Send(wire::Error{wire::ErrorCode::kChunkMismatch, "chunk 2 never arrived", first.sequence});
  const wire::RoundTask again = peer->Expect<wire::RoundTask>();
  EXPECT_EQ(peer->chunked_received(), 2);
  EXPECT_EQ(again.round, task.round);
  EXPECT_EQ(again.ticket, task.ticket) << "the same task, not a new attempt";
  EXPECT_EQ(again.tensors, task.tensors);
  peer->SendChunked(Answer(again, 0.25f, false), kChunk);
  peer->Expect<wire::Ack>();
  peer->Expect<wire::Bye>();
  ASSERT_TRUE(FinishCoordinator().ok()) << result_.ToString();
}

}  // namespace
}  // namespace fedlora::server
