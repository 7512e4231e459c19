#include "client/train/training_batcher.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <vector>

#include "common/log.h"

namespace fedlora::client {

void TrainingBatcher::Ticket::Release() {
  if (owner_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(owner_->mu_);
    --owner_->preparing_;
  }
  owner_->cv_.notify_all();
  owner_ = nullptr;
}

TrainingBatcher::TrainingBatcher(std::shared_ptr<const LlamaModel> model, std::mutex* compute_lock,
                                 BatchingOptions options)
    : model_(std::move(model)),
      compute_lock_(compute_lock),
      options_([&] {
        options.max_clients = std::max<std::uint32_t>(1, options.max_clients);
        options.lanes = std::max<std::uint32_t>(1, options.lanes);
        return options;
      }()) {
  for (std::uint32_t i = 0; i < options_.lanes; ++i) {
    lanes_.emplace_back([this] { Loop(stop_.get_token()); });
  }
}

TrainingBatcher::~TrainingBatcher() {
  stop_.request_stop();
  cv_.notify_all();
  for (std::jthread& lane : lanes_) lane.join();
}

TrainingBatcher::Ticket TrainingBatcher::Announce() {
  std::lock_guard<std::mutex> lock(mu_);
  ++preparing_;
  return Ticket(this);
}

Result<TrainStats> TrainingBatcher::Train(Ticket ticket, const BatchedClient& client,
                                          std::stop_token stop) {
  Job job{.client = client, .stop = stop, .queued = SteadyClock::now()};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_.stop_requested()) {
      return Status(StatusCode::kCancelled, "the training batcher is shutting down");
    }
    queue_.push_back(&job);
    last_arrival_ = job.queued;
    // The ticket's worker is no longer preparing: it is queued.
    --preparing_;
    ticket.owner_ = nullptr;
  }
  cv_.notify_all();
  // Wakes the batcher (to drop this job if it is still queued) and this thread.
  std::stop_callback wake(stop, [this] {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return job.done; });
  return std::move(job.result);
}

BatcherStats TrainingBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool TrainingBatcher::DropCancelled() {
  const auto cancelled = [](const Job* j) { return j->stop.stop_requested(); };
  bool any = false;
  for (Job* j : queue_) {
    if (!cancelled(j)) continue;
    j->result = Status(StatusCode::kCancelled, "training cancelled while waiting for its group");
    j->done = true;
    any = true;
  }
  if (any) {
    std::erase_if(queue_, cancelled);
    cv_.notify_all();
  }
  return any;
}

std::vector<TrainingBatcher::Job*> TrainingBatcher::TakeGroup() {
  std::vector<Job*> group;
  const std::span<const at::Tensor> key = queue_.front()->client.base_weights;
  const auto same_overlay = [&key](const Job* j) {
    const std::span<const at::Tensor> w = j->client.base_weights;
    return w.data() == key.data() && w.size() == key.size();
  };
  for (auto it = queue_.begin(); it != queue_.end() && group.size() < options_.max_clients;) {
    if (same_overlay(*it)) {
      (*it)->running = true;
      group.push_back(*it);
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  // Arrival order is a race between session threads; the clients' seeds are not. The same
  // clients then always train in the same rows, so reruns round alike.
  std::sort(group.begin(), group.end(),
            [](const Job* a, const Job* b) { return a->client.seed < b->client.seed; });
  return group;
}

void TrainingBatcher::Loop(std::stop_token stop) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop.stop_requested()) {
    cv_.wait(lock, stop, [&] { return !queue_.empty(); });
    if (stop.stop_requested()) break;
    // Gather: until the group is full, or nobody is preparing and arrivals have paused, or the
    // oldest job has waited long enough.
    while (!stop.stop_requested()) {
      DropCancelled();
      if (queue_.empty() || queue_.size() >= options_.max_clients) break;
      const SteadyClock::time_point now = SteadyClock::now();
      const SteadyClock::time_point oldest_due = queue_.front()->queued + options_.max_gather;
      if (now >= oldest_due) break;
      SteadyClock::time_point wake = oldest_due;
      if (preparing_ == 0) {
        const SteadyClock::time_point quiet_due = last_arrival_ + options_.gather;
        if (now >= quiet_due) break;
        wake = std::min(wake, quiet_due);
      }
      cv_.wait_until(lock, stop, wake, [] { return false; });
    }
    if (stop.stop_requested() || queue_.empty()) continue;
    const std::vector<Job*> group = TakeGroup();
    lock.unlock();
    RunGroup(group, stop);
    lock.lock();
    for (Job* j : group) j->done = true;
    cv_.notify_all();
  }
  for (Job* j : queue_) {
    j->result = Status(StatusCode::kCancelled, "the training batcher is shutting down");
    j->done = true;
  }
  queue_.clear();
  cv_.notify_all();
}

void TrainingBatcher::RunGroup(const std::vector<Job*>& group, std::stop_token stop) {
  // The group stops when the batcher does or when every one of its clients was asked to stop.
  std::stop_source group_stop;
  std::atomic<std::size_t> stopped{0};
  const auto one_stopped = [&] {
    if (stopped.fetch_add(1) + 1 == group.size()) group_stop.request_stop();
  };
  std::vector<std::unique_ptr<std::stop_callback<std::function<void()>>>> callbacks;
  callbacks.reserve(group.size() + 1);
  for (Job* j : group) {
    callbacks.push_back(
        std::make_unique<std::stop_callback<std::function<void()>>>(j->stop, one_stopped));
  }
  callbacks.push_back(std::make_unique<std::stop_callback<std::function<void()>>>(
      stop, [&group_stop] { group_stop.request_stop(); }));

  std::vector<BatchedClient> clients;
  clients.reserve(group.size());
  for (const Job* j : group) clients.push_back(j->client);
  std::optional<std::unique_lock<std::mutex>> compute;
  if (compute_lock_ != nullptr && options_.lanes == 1) compute.emplace(*compute_lock_);
  const auto start = SteadyClock::now();
  Result<std::vector<TrainStats>> stats =
      TrainLoraBatched(*model_, clients,
                       {.max_rows_per_pass = options_.max_rows_per_pass}, group_stop.get_token());
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  compute.reset();
  if (stats.ok()) {
    std::uint64_t steps = 0;
    for (const TrainStats& t : *stats) steps = std::max(steps, t.steps);
    LogDebug("batched group of ", group.size(), " clients: ", steps, " steps in ",
             static_cast<int>(seconds * 1000), " ms");
  }
  callbacks.clear();  // Before `stopped` and `group_stop` go out of scope.

  std::lock_guard<std::mutex> lock(mu_);
  stats_.groups += 1;
  stats_.clients += group.size();
  stats_.largest_group = std::max<std::uint32_t>(stats_.largest_group,
                                                 static_cast<std::uint32_t>(group.size()));
  stats_.seconds += seconds;
  if (!stats.ok()) {
    if (stats.status().code() != StatusCode::kCancelled) {
      LogWarn("a batched group of ", group.size(), " clients failed: ", stats.status().ToString());
    }
    for (Job* j : group) {
      j->result = stats.status().WithContext(StrCat("batched group of ", group.size()));
    }
    return;
  }
  for (std::size_t i = 0; i < group.size(); ++i) group[i]->result = (*stats)[i];
}

}  // namespace fedlora::client
