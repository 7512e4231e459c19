#include "server/strategies/strategy.h"

#include <algorithm>
#include <numeric>

namespace fedlora::server {

MemoryUploads::MemoryUploads(std::span<const ClientUpdate> updates,
                             std::span<const ClientTask> tasks)
    : updates_(updates), tasks_(tasks), order_(updates.size()) {
  std::iota(order_.begin(), order_.end(), std::size_t{0});
  std::sort(order_.begin(), order_.end(), [&](std::size_t a, std::size_t b) {
    return updates_[a].client_id < updates_[b].client_id;
  });
}

Status MemoryUploads::ForEach(
    const std::function<Status(const ClientUpdate&, const ClientTask&)>& fn) const {
  static const ClientTask kNoTask;
  for (std::size_t k : order_) {
    FEDLORA_RETURN_IF_ERROR(fn(updates_[k], k < tasks_.size() ? tasks_[k] : kNoTask));
  }
  return OkStatus();
}

namespace {

class GatheringAccumulator final : public RoundAccumulator {
 public:
  explicit GatheringAccumulator(CombineAll combine) : combine_(std::move(combine)) {}
  Status Fold(const ClientUpdate& update, const ClientTask& task) override { return OkStatus(); }
  Result<AggregateReport> Finish(GlobalState& state, const UploadSource& uploads) override {
    std::vector<ClientUpdate> updates;
    std::vector<ClientTask> tasks;
    updates.reserve(uploads.size());
    tasks.reserve(uploads.size());
    FEDLORA_RETURN_IF_ERROR(uploads.ForEach([&](const ClientUpdate& u, const ClientTask& t) {
      updates.push_back(u);
      tasks.push_back(t);
      return OkStatus();
    }));
    return combine_(state, updates, tasks);
  }

 private:
  CombineAll combine_;
};

}  // namespace

std::unique_ptr<RoundAccumulator> MakeGatheringAccumulator(CombineAll combine) {
  return std::make_unique<GatheringAccumulator>(std::move(combine));
}

Result<std::vector<double>> SliceAsDoubles(DType dtype, std::span<const std::byte> data,
                                           std::int64_t begin, std::int64_t count,
                                           std::string_view what) {
  const auto width = static_cast<std::int64_t>(ByteWidth(dtype));
  if (begin < 0 || count < 0 || (begin + count) * width > static_cast<std::int64_t>(data.size())) {
    return InvalidArgument(what, ": elements [", begin, ", ", begin + count, ") are beyond its ",
                           static_cast<std::int64_t>(data.size()) / width, " elements");
  }
  Tensor slice{dtype, {count}, {}};
  slice.data.assign(data.begin() + begin * width, data.begin() + (begin + count) * width);
  return ToDoubles(slice);
}

Status MemoryUploads::ReadSlices(std::string_view name, std::int64_t begin, std::int64_t count,
                                 std::vector<std::vector<double>>& out) const {
  out.resize(order_.size());
  for (std::size_t i = 0; i < order_.size(); ++i) {
    const ClientUpdate& u = updates_[order_[i]];
    const auto it = u.tensors.find(name);
    if (it == u.tensors.end()) {
      return InvalidArgument("client ", u.client_id, " uploaded no tensor '", name, "'");
    }
    FEDLORA_ASSIGN_OR_RETURN(out[i],
                             SliceAsDoubles(it->second.dtype, it->second.data, begin, count,
                                            StrCat("client ", u.client_id, "'s '", name, "'")));
  }
  return OkStatus();
}

Result<AggregateReport> AggregateAll(Strategy& strategy, GlobalState& state, std::uint64_t round,
                                     std::span<const ClientUpdate> updates,
                                     std::span<const ClientTask> tasks) {
  if (updates.empty()) return InvalidArgument(strategy.name(), ": nothing to aggregate");
  static const ClientTask kNoTask;
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<RoundAccumulator> acc, strategy.Begin(state, round));
  for (std::size_t k = 0; k < updates.size(); ++k) {
    FEDLORA_RETURN_IF_ERROR(acc->Fold(updates[k], k < tasks.size() ? tasks[k] : kNoTask));
  }
  return acc->Finish(state, MemoryUploads(updates, tasks));
}

}  // namespace fedlora::server
