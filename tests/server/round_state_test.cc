// The round state machine (server/round_state.h) on its own: transitions, the gate of uploads
// and evaluations, and the decisions at the deadline, driven by a FakeClock. No sockets, no
// strategy (a counting accumulator stands in for its sums).
#include "server/round_state.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "common/wire/codec.h"  // wire::DecodeErrorCode

namespace fedlora::server {
namespace {

using std::chrono::milliseconds;
using wire::ErrorCode;

// Counts folds; Finish reports one weight per fold.
class CountingAccumulator final : public RoundAccumulator {
 public:
  explicit CountingAccumulator(int* folds) : folds_(folds) {}
  Status Fold(const ClientUpdate& update, const ClientTask&) override {
    if (update.num_samples == 0) return InvalidArgument("nothing to fold");
    ++*folds_;
    return OkStatus();
  }
  Result<AggregateReport> Finish(GlobalState& state, const UploadSource&) override {
    state.strategy_json = "aggregated";
    return AggregateReport{{{"n", static_cast<double>(*folds_)}}, {}};
  }

 private:
  int* folds_;
};

wire::TaskTicket Ticket(std::uint32_t attempt, std::uint8_t tag) {
  wire::TaskTicket ticket;
  ticket.attempt = attempt;
  ticket.nonce.fill(tag);
  return ticket;
}

ClientTask TaskFor(const std::string& id) {
  ClientTask task;
  task.client_id = id;
  task.tensors["a"] = Zeros(DType::kF32, {2, 2});
  return task;
}

ClientUpdate UploadOf(const std::string& id) {
  return ClientUpdate{id, 8, 10, {{"train_loss", 1.0}}, {{"a", Zeros(DType::kF32, {2, 2})}}};
}

class RoundStateTest : public ::testing::Test {
 protected:
  static RoundConfig Rules() {
    RoundConfig rules;
    rules.quorum = 2;
    rules.timeout_ms = 1000;
    rules.retry_delay_ms = 5000;
    return rules;
  }

  // Round 1 of a fit wanting `want` updates, with one attempt tasking `ids` (ticket tag = index).
  void StartRound(std::uint32_t want, const std::vector<std::string>& ids) {
    state_.BeginFit(1, clock_.Now(), want, std::make_unique<CountingAccumulator>(&folds_));
    state_.BeginAttempt(clock_.Now());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      state_.AddTask(ids[i], TaskFor(ids[i]), ClientInfo{ids[i], {}, {}, {}},
                     Ticket(1, static_cast<std::uint8_t>(i + 1)));
    }
  }
  // `id`'s upload passes the gate, is folded and accepted.
  void Accept(const std::string& id) {
    const wire::TaskTicket ticket = state_.run().tickets.at(id);
    ASSERT_EQ(state_.AdmitUpload(id, 1, ticket).value(), UploadGate::kNew);
    ASSERT_TRUE(state_.Fold(UploadOf(id), state_.run().tasks.at(id)).ok());
    state_.OnUploadAccepted(UploadOf(id), 0.5, 100);
  }

  FakeClock clock_;
  RoundState state_{Rules(), milliseconds(2000)};
  int folds_ = 0;
};

TEST_F(RoundStateTest, ARoundStartsWaitingAndAFitPhaseKeepsTasksWithoutTheirTensors) {
  EXPECT_EQ(state_.phase(), RoundPhase::kWaiting);
  StartRound(2, {"a", "b"});
  EXPECT_EQ(state_.phase(), RoundPhase::kFit);
  EXPECT_EQ(state_.run().attempt, 1u);
  EXPECT_EQ(state_.run().outstanding.size(), 2u);
  EXPECT_TRUE(state_.run().tasks.at("a").tensors.empty());
}

TEST_F(RoundStateTest, AcceptedUploadsKeepTheirCountsButNotTheirTensors) {
  StartRound(2, {"a", "b"});
  Accept("a");
  const RoundRun& run = state_.run();
  ASSERT_TRUE(run.accepted.contains("a"));
  EXPECT_TRUE(run.accepted.at("a").tensors.empty());
  EXPECT_EQ(run.accepted.at("a").num_samples, 8u);
  EXPECT_EQ(run.params_up, 4u);
  EXPECT_EQ(run.bytes_up, 100u);
  EXPECT_EQ(run.update_norms.at("a"), 0.5);
  EXPECT_FALSE(run.outstanding.contains("a"));
  EXPECT_EQ(folds_, 1);
}

TEST_F(RoundStateTest, AnUploadForAnotherRoundIsStaleAndAnUnselectedClientsIsRefused) {
  StartRound(2, {"a"});
  const wire::TaskTicket ticket = state_.run().tickets.at("a");
  EXPECT_EQ(wire::DecodeErrorCode(state_.AdmitUpload("a", 2, ticket).status()),
            ErrorCode::kStaleRound);
  EXPECT_EQ(wire::DecodeErrorCode(state_.AdmitUpload("zed", 1, ticket).status()),
            ErrorCode::kNotSelected);
}

TEST_F(RoundStateTest, AnUploadCarryingAnotherTasksTicketIsATaskMismatch) {
  StartRound(2, {"a", "b"});
  const Result<UploadGate> gate = state_.AdmitUpload("a", 1, state_.run().tickets.at("b"));
  EXPECT_EQ(wire::DecodeErrorCode(gate.status()), ErrorCode::kTaskMismatch);
  EXPECT_NE(gate.status().message().find("(attempt 1)"), std::string::npos);
}

TEST_F(RoundStateTest, AResendOfAnAcceptedUploadIsAcknowledgedAgain) {
  StartRound(2, {"a", "b"});
  Accept("a");
  EXPECT_EQ(state_.AdmitUpload("a", 1, state_.run().tickets.at("a")).value(), UploadGate::kResend);
}

TEST_F(RoundStateTest, AtTheDeadlineWithAQuorumTheRoundAggregates) {
  StartRound(2, {"a", "b", "c"});
  Accept("a");
  Accept("b");
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kWait);  // "c" still has time.
  clock_.Advance(milliseconds(1000));
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kAggregate);
  EXPECT_TRUE(state_.run().failed.contains("c"));  // It missed the deadline.

  GlobalState candidate;
  const MemoryUploads none({}, {});
  Result<AggregateReport> report = state_.FinishAccumulator(candidate, none);
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(state_.has_accumulator());
  state_.OnAggregated(candidate, *report);
  state_.BeginEval(clock_.Now());
  EXPECT_EQ(state_.phase(), RoundPhase::kEval);
  const std::optional<GlobalState> committed = state_.Close();
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->strategy_json, "aggregated");
  EXPECT_EQ(state_.phase(), RoundPhase::kWaiting);
  EXPECT_TRUE(state_.run().accepted.empty());
}

TEST_F(RoundStateTest, BelowTheQuorumARetryWaitsForTheRetryDelayAndForEnoughClients) {
  StartRound(2, {"a", "b"});
  Accept("a");
  clock_.Advance(milliseconds(1000));
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kWait);  // Schedules the retry.
  EXPECT_TRUE(state_.run().awaiting_retry);
  EXPECT_EQ(state_.run().retry_not_before, state_.run().attempt_started + milliseconds(5000));
  EXPECT_EQ(state_.NextTimer(clock_.Now(), clock_.Now() + milliseconds(60000)),
            state_.run().retry_not_before);
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kWait);  // The delay runs.
  clock_.Advance(milliseconds(4000));
  EXPECT_EQ(state_.StepFit(clock_.Now(), 0), FitStep::kWaitForClients);  // Nobody to ask.
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kRetry);
  state_.BeginAttempt(clock_.Now());
  state_.AddTask("b", TaskFor("b"), ClientInfo{"b", {}, {}, {}}, Ticket(2, 9));
  EXPECT_EQ(state_.run().attempt, 2u);
  EXPECT_FALSE(state_.run().awaiting_retry);
  EXPECT_FALSE(state_.run().failed.contains("b"));  // Asked again.
}

TEST_F(RoundStateTest, ARoundGivesUpAfterMaxAttempts) {
  RoundConfig rules = Rules();
  rules.max_attempts = 1;
  RoundState state(rules, milliseconds(2000));
  state.BeginFit(1, clock_.Now(), 2, std::make_unique<CountingAccumulator>(&folds_));
  state.BeginAttempt(clock_.Now());
  state.AddTask("a", TaskFor("a"), ClientInfo{"a", {}, {}, {}}, Ticket(1, 1));
  clock_.Advance(milliseconds(1000));
  EXPECT_EQ(state.StepFit(clock_.Now(), 1), FitStep::kGiveUp);
}

TEST_F(RoundStateTest, TheQuorumFractionCountsOnlyClientsThatCanStillAnswer) {
  RoundConfig rules = Rules();
  rules.quorum = 1;
  rules.quorum_fraction = 0.5;
  RoundState state(rules, milliseconds(2000));
  state.BeginFit(1, clock_.Now(), 10, std::make_unique<CountingAccumulator>(&folds_));
  EXPECT_EQ(state.Quorum(10), 5u);
  EXPECT_EQ(state.Quorum(4), 2u);  // Six of the ten wanted left.
  EXPECT_EQ(state.Quorum(0), 1u);
}

TEST_F(RoundStateTest, AClientThatLeavesOrRefusesItsTaskCountsAsFailed) {
  StartRound(2, {"a", "b"});
  state_.OnClientGone("a");
  EXPECT_TRUE(state_.run().failed.contains("a"));
  state_.OnTaskSent("b", 0, 7, 100, 0);
  state_.OnTaskRefused("b", 6);  // Another message of b's.
  EXPECT_TRUE(state_.run().outstanding.contains("b"));
  state_.OnTaskRefused("b", 7);
  EXPECT_TRUE(state_.run().failed.contains("b"));
  EXPECT_EQ(state_.run().bytes_down, 100u);
}

TEST_F(RoundStateTest, AClientThatComesBackOwesItsTaskAgainUnlessARetryIsPending) {
  StartRound(2, {"a", "b"});
  state_.OnClientGone("a");
  EXPECT_EQ(state_.OnAdmitted("a"), Owed::kTask);
  EXPECT_TRUE(state_.run().outstanding.contains("a"));
  EXPECT_EQ(state_.OnAdmitted("zed"), Owed::kNothing);
  Accept("b");
  EXPECT_EQ(state_.OnAdmitted("b"), Owed::kNothing);
  state_.OnClientGone("a");
  clock_.Advance(milliseconds(1000));
  EXPECT_EQ(state_.StepFit(clock_.Now(), 1), FitStep::kWait);  // Below quorum: a retry.
  EXPECT_EQ(state_.OnAdmitted("a"), Owed::kNothing);           // The retry will select it (or not).
}

TEST_F(RoundStateTest, AnEvaluationAnswersOnlyItsOwnTaskOfTheOpenRound) {
  StartRound(1, {"a"});
  Accept("a");
  state_.OnAggregated(GlobalState{}, AggregateReport{});
  state_.BeginEval(clock_.Now());
  state_.AddEvalTask("a", Ticket(0, 3));
  EXPECT_EQ(wire::DecodeErrorCode(state_.AdmitEvalResult("a", 2, Ticket(0, 3))),
            ErrorCode::kStaleRound);
  EXPECT_EQ(wire::DecodeErrorCode(state_.AdmitEvalResult("b", 1, Ticket(0, 3))),
            ErrorCode::kUnexpectedMessage);
  EXPECT_EQ(wire::DecodeErrorCode(state_.AdmitEvalResult("a", 1, Ticket(0, 4))),
            ErrorCode::kTaskMismatch);
  EXPECT_TRUE(state_.AdmitEvalResult("a", 1, Ticket(0, 3)).ok());
  EXPECT_FALSE(state_.EvalDue(clock_.Now()));
  state_.OnEvalAnswered("a");
  state_.OnEvalResult("a", wire::EvalResult{}, 50);
  EXPECT_TRUE(state_.EvalDue(clock_.Now()));
  EXPECT_EQ(state_.run().eval_bytes_up, 50u);
}

TEST_F(RoundStateTest, AnEvaluationThatRunsPastItsDeadlineIsDueWithoutTheLateOnes) {
  StartRound(1, {"a"});
  Accept("a");
  state_.OnAggregated(GlobalState{}, AggregateReport{});
  state_.BeginEval(clock_.Now());
  state_.AddEvalTask("a", Ticket(0, 3));
  EXPECT_EQ(state_.NextTimer(clock_.Now(), clock_.Now() + milliseconds(60000)),
            clock_.Now() + milliseconds(2000));
  clock_.Advance(milliseconds(2000));
  EXPECT_TRUE(state_.EvalDue(clock_.Now()));
  EXPECT_TRUE(state_.run().eval_outstanding.empty());
}

TEST_F(RoundStateTest, RevokingAnUploadDuringEvaluationReopensTheFitForAnotherAggregate) {
  StartRound(2, {"a", "b", "c"});
  Accept("a");
  Accept("b");
  Accept("c");
  GlobalState candidate;
  const MemoryUploads none({}, {});
  state_.OnAggregated(candidate, state_.FinishAccumulator(candidate, none).value());
  state_.BeginEval(clock_.Now());
  state_.AddEvalTask("a", Ticket(0, 1));

  ASSERT_TRUE(state_.DropUpload("c"));
  EXPECT_FALSE(state_.DropUpload("c"));  // Only once.
  state_.ReopenFit(clock_.Now());
  state_.ReplaceAccumulator(std::make_unique<CountingAccumulator>(&folds_));
  EXPECT_EQ(state_.phase(), RoundPhase::kFit);
  EXPECT_FALSE(state_.run().candidate.has_value());
  EXPECT_TRUE(state_.run().eval_outstanding.empty());
  EXPECT_EQ(state_.StepFit(clock_.Now(), 0), FitStep::kAggregate);  // Two left: the quorum.
}

TEST_F(RoundStateTest, AnInitialisationNotDeliveredInTimeIsNotAskedOfThatClientAgain) {
  state_.BeginInit(clock_.Now(), "a", TaskFor("a"), ClientInfo{"a", {}, {}, {}}, Ticket(0, 1));
  EXPECT_EQ(state_.phase(), RoundPhase::kInit);
  EXPECT_EQ(state_.AdmitUpload("a", 0, Ticket(0, 1)).value(), UploadGate::kNew);
  EXPECT_FALSE(state_.StepInit(clock_.Now()));
  clock_.Advance(milliseconds(1000));
  EXPECT_TRUE(state_.StepInit(clock_.Now()));
  EXPECT_EQ(state_.phase(), RoundPhase::kWaiting);
  EXPECT_TRUE(state_.InitFailed("a"));
  EXPECT_FALSE(state_.InitFailed("b"));
}

TEST_F(RoundStateTest, OutgoingTasksCountAdapterAndCorrectionPayloadsApart) {
  StartRound(1, {"a"});
  TensorMap tensors;
  tensors["m.lora_A.weight"] = Zeros(DType::kF32, {2, 3});
  tensors["base.m.u"] = Zeros(DType::kF32, {4});
  EXPECT_EQ(state_.CountDown(tensors, /*count_adapter=*/true), 16u);
  state_.OnTaskSent("a", 3, 1, 1000, 16);
  EXPECT_EQ(state_.run().params_down, 6u);
  EXPECT_EQ(state_.run().correction_params_down, 4u);
  EXPECT_EQ(state_.run().correction_bytes_down, 16u);
  EXPECT_EQ(state_.run().bytes_down, 984u);
  EXPECT_EQ(state_.run().sent_base.at("a"), 3u);
}

}  // namespace
}  // namespace fedlora::server
