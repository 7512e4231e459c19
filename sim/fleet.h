// fleet.h — the virtual clients of one fedlora-sim process: a record per client, and real client
// sessions (client/session.h) for those that are online to the coordinator.
//
// Two ways to hold them (SimConfig::sessions):
//   persistent: every client has a worker, a session and a thread for the whole run — the
//     federation a handful of organisations (cross-silo) would be.
//   per_round: a client is a record (ClientRecord: its index, counters and, once it has been
//     selected, its tokens) with no thread, socket or heartbeat. For each round the fleet draws
//     the clients that check in (check_in.h), builds their workers on the shared base model,
//     opens their sessions, and retires them once the coordinator has committed the round.
//     Private state (FedSA-LoRA's B, a DP-SGD budget) lives in each client's state directory,
//     where the next worker built for it finds it. Cross-device populations of 10^5 clients fit.
//
// Stop() and StopFromSignal() may be called from any thread; the rest from the thread that
// built the fleet, except RoundReady (the coordinator's thread) and Memory/RoundsTrained
// (thread-safe).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "client/data/corpus_cache.h"
#include "client/local_worker.h"
#include "client/session.h"
#include "common/clock.h"
#include "common/net/zmq_transport.h"
#include "common/status.h"
#include "sim/fleet_model.h"
#include "sim/simulator.h"

namespace fedlora::sim {

// An idle virtual client. About 48 bytes, plus its tokens once it has been selected (kept, so a
// client is tokenized once per run).
struct ClientRecord {
  std::uint32_t index = 0;                            // Global client index.
  std::shared_ptr<const client::ClientDataset> data;  // Null until first needed.
  std::atomic<std::uint32_t> rounds_trained{0};       // Updates it produced.
  std::atomic<std::uint64_t> state_bytes{0};          // Resident between tasks.
  std::atomic<std::uint64_t> trainable_params{0};     // Of its last adapter.
};

class Fleet {
 public:
  // The clients `placement` assigns to this process, all connecting to `endpoint`. Persistent
  // sessions: every worker is built now (errors: MakeLocalWorker's, prefixed with the client's
  // name). `on_all_introduced` (persistent only; may be empty) runs once, on a session thread,
  // with the number of sessions when every one has sent its first Hello. `context` and `clock`
  // must outlive the fleet.
  static Result<std::unique_ptr<Fleet>> Build(const SimConfig& config, const Placement& placement,
                                              const std::string& endpoint,
                                              std::shared_ptr<const client::ModelAssets> assets,
                                              net::Context& context, const Clock& clock,
                                              const client::BatchingOptions& batching,
                                              std::function<void(std::size_t)> on_all_introduced);
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  std::size_t size() const { return records_.size(); }    // Clients of this process.
  std::uint32_t per_round() const { return per_round_; }  // Check-ins a round (0: persistent).
  // "client-00, client-01, ..." (the first few and a count past ten).
  std::string names() const;

  // Persistent: runs every session on a thread of its own. Per round: checks in the clients of
  // `first_round` (the round the coordinator will start next) and opens their sessions; later
  // rounds check in when RoundReady asks for them. A session that fails (any status but OK and
  // kCancelled) stops the others and calls `on_failure` (thread-safe; e.g. stopping the
  // in-process coordinator, which would otherwise wait for it). Errors (per round): the first
  // pool could not be drawn or built.
  Status Start(std::uint64_t first_round, std::function<void()> on_failure = {});

  // Per round, the coordinator's round gate (Coordinator::SetRoundGate): true once `live` is
  // exactly the clients checked in for `round`. Asked for another round, it retires the current
  // clients and checks in that round's (on the fleet's own thread) and answers false meanwhile.
  bool RoundReady(std::uint64_t round, const std::vector<std::string>& live);

  // Asks every session to end and the fleet to check in nobody more; records that the fleet was
  // stopped from outside. Not for signal handlers (StopFromSignal is).
  void Stop();
  // Async-signal-safe: persistent sessions are told to stop; per round, only the flag is set
  // (the coordinator's stop ends the run, which then calls Stop()).
  void StopFromSignal();
  bool stopped() const { return stopped_.load(); }

  // Waits for every session (and, per round, the fleet's thread). Then: statuses are final.
  void Join();

  // After Join(): the first failure (not OK, not kCancelled), or OK.
  Status FirstFailure() const;
  // After Join(): a warning per session that ended in failure.
  void WarnFailures() const;

  FleetModel* model() const { return model_.get(); }
  const client::TrainingBatcher* batcher() const { return batcher_.get(); }

  // Memory the clients hold, from their records (thread-safe).
  struct MemoryReport {
    std::uint64_t state_bytes_total = 0;     // Resident client state (data, private factors).
    std::uint64_t max_trainable_params = 0;  // Largest adapter trained so far.
    std::uint64_t records_bytes = 0;         // The records themselves.
    std::uint64_t tokenized = 0;             // Clients whose data is loaded.
  };
  MemoryReport Memory() const;

  // Per round: the check-ins of the clients now open (thread-safe).
  struct CheckInReport {
    std::uint64_t round = 0;
    std::uint32_t checked_in = 0;
    std::uint32_t offline = 0;  // Drawn but offline in the round (fleet availability).
  };
  CheckInReport LastCheckIn() const;

  // "client-00=2 client-02=2": rounds each client trained (only clients that trained, past ten
  // clients).
  std::string RoundsTrained() const;

 private:
  struct Member;

  Fleet() = default;

  client::ClientConfig ConfigFor(std::uint32_t index) const;
  // Builds `record`'s worker and session (its data loaded first if need be).
  Result<std::unique_ptr<Member>> Open(ClientRecord& record, bool checked_in);
  // Runs `m`'s session on its own thread.
  void Launch(Member& m);
  // Stops and joins `members`, keeping their failures.
  void Retire(std::vector<std::unique_ptr<Member>>& members);
  // Draws and opens the clients of `round` into `out`.
  Status CheckIn(std::uint64_t round, std::vector<std::unique_ptr<Member>>* out,
                 CheckInReport* report);
  void Drive();  // The fleet's thread (per round).
  void RecordFailure(const std::string& name, const Status& status);

  SimConfig config_;
  Placement placement_;
  std::string endpoint_;
  std::shared_ptr<const client::ModelAssets> assets_;
  net::Context* context_ = nullptr;
  const Clock* clock_ = nullptr;
  std::uint32_t per_round_ = 0;
  std::function<void()> on_failure_;
  std::function<void()> on_first_hello_;

  // Outlive the batcher and the workers (declared first); never resized after Build.
  std::vector<std::mutex> compute_locks_;
  std::unique_ptr<FleetModel> model_;                 // Null without a `fleet` section.
  std::shared_ptr<client::TrainingBatcher> batcher_;  // Null with one lane and K = 1.
  std::unique_ptr<client::CorpusCache> corpus_;       // Text read and partitioned once.
  std::vector<ClientRecord> records_;                 // Never resized after Build.
  std::atomic<std::size_t> introduced_{0};
  std::atomic<std::uint64_t> tokenized_{0};  // Records whose data is loaded.
  std::atomic<bool> stopped_{false};

  // Persistent: every member, never resized after Build. Per round: the open pool (mu_).
  std::vector<std::unique_ptr<Member>> members_;
  std::thread driver_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_requested_ = false;                           // mu_
  bool swapping_ = false;                                 // mu_
  std::optional<std::uint64_t> pool_round_;               // mu_
  std::optional<std::uint64_t> requested_round_;          // mu_
  std::vector<std::string> pool_names_;                   // mu_, sorted
  CheckInReport last_check_in_;                           // mu_
  std::vector<std::pair<std::string, Status>> failures_;  // mu_
};

}  // namespace fedlora::sim
