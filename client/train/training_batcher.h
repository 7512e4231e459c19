// training_batcher.h — gathers the training tasks of many LocalWorkers that share one base model
// and trains them in groups with TrainLoraBatched (batched_trainer.h).
//
// Each virtual client of the simulator runs its own session and LocalWorker on its own thread,
// exactly as a deployed client would; the batcher is where their training meets. A worker
// announces itself when a task arrives (Announce), prepares its adapter and data, then hands
// them over (Train) and blocks until its group has trained. The batcher's thread forms a group
// when max_clients jobs wait, or when no announced worker is still preparing and no job has
// arrived for `gather` (a round's tasks reach the sessions in one burst, so a round's selected
// clients end up in few groups), or when the oldest job has waited max_gather. A group holds
// only jobs with the same base-weight overlay (TrainLoraBatched's requirement); the others wait
// for the next group, and a group's clients are ordered by their seeds, not by arrival. With
// options.lanes > 1, that many groups train at once, each on its own thread (size LibTorch's
// intra-op threads accordingly); a group then takes no compute lock (the lanes are the limit),
// otherwise it trains under the shared compute lock, like any worker.
//
// Grouping changes results only by float rounding (TrainLoraBatched equals sequential
// TrainLora; see batched_trainer.h), so timing-dependent grouping never changes what a client
// learns beyond that.
//
// Cancellation: a job whose stop token fires while queued leaves the queue at once (kCancelled);
// a running group is cancelled when every one of its jobs has been asked to stop, or when the
// batcher is destroyed. A group that fails as a whole (a client's loss became non-finite, or
// LibTorch threw) fails each of its jobs with that status, the group size in context.
//
// Thread-safe. Internal to the client's LibTorch side: local_worker.h declares the torch-free
// handle the simulator holds.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "client/local_worker.h"
#include "client/model/llama.h"
#include "client/train/batched_trainer.h"
#include "common/status.h"

namespace fedlora::client {

class TrainingBatcher {
 public:
  // `model` (kept alive by the aliasing pointer) and `compute_lock` (may be null) must outlive
  // the batcher. options.max_clients and options.lanes are clamped to >= 1.
  TrainingBatcher(std::shared_ptr<const LlamaModel> model, std::mutex* compute_lock,
                  BatchingOptions options);
  ~TrainingBatcher();  // Cancels what is queued and running, then joins its thread.
  TrainingBatcher(const TrainingBatcher&) = delete;
  TrainingBatcher& operator=(const TrainingBatcher&) = delete;

  // A worker that got a task and will call Train: groups wait for it while it prepares.
  // Destroying the ticket without calling Train withdraws it (an error while preparing).
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& other) noexcept : owner_(std::exchange(other.owner_, nullptr)) {}
    Ticket& operator=(Ticket&& other) noexcept {
      Release();
      owner_ = std::exchange(other.owner_, nullptr);
      return *this;
    }
    ~Ticket() { Release(); }

   private:
    friend class TrainingBatcher;
    explicit Ticket(TrainingBatcher* owner) : owner_(owner) {}
    void Release();
    TrainingBatcher* owner_ = nullptr;
  };
  Ticket Announce();

  // Queues `client` (its pointers and views must stay valid until this returns), waits for its
  // group and returns its TrainStats, as TrainLora would for it alone. Consumes `ticket`.
  // kCancelled: `stop` fired (see above) or the batcher is shutting down.
  Result<TrainStats> Train(Ticket ticket, const BatchedClient& client, std::stop_token stop);

  BatcherStats stats() const;

 private:
  using SteadyClock = std::chrono::steady_clock;
  struct Job {
    BatchedClient client;
    std::stop_token stop;
    SteadyClock::time_point queued{};
    bool running = false;
    bool done = false;
    Result<TrainStats> result = Status(StatusCode::kCancelled, "not trained");
  };
  void Loop(std::stop_token stop);
  // Under mu_: completes queued jobs whose stop fired. True if any was removed.
  bool DropCancelled();
  // Under mu_: the next group (same overlay as the oldest job, FIFO, at most max_clients).
  std::vector<Job*> TakeGroup();
  void RunGroup(const std::vector<Job*>& group, std::stop_token stop);

  const std::shared_ptr<const LlamaModel> model_;
  std::mutex* const compute_lock_;
  const BatchingOptions options_;

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Job*> queue_;
  std::uint32_t preparing_ = 0;
  SteadyClock::time_point last_arrival_{};
  BatcherStats stats_;
  std::stop_source stop_;
  std::vector<std::jthread> lanes_;  // Last: started after every member above exists.
};

}  // namespace fedlora::client
