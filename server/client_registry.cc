#include "server/client_registry.h"

#include <algorithm>

namespace fedlora::server {

Clock::TimePoint SilenceCutoff(Clock::TimePoint now, Clock::TimePoint caught_up,
                               std::chrono::steady_clock::duration window) {
  return std::max(std::min(caught_up, now), now - window) - window;
}

ClientConnection* ClientRegistry::FindByRoute(std::string_view route) {
  const auto it = id_by_route_.find(route);
  return it == id_by_route_.end() ? nullptr : FindById(it->second);
}

ClientConnection* ClientRegistry::FindById(std::string_view id) {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &it->second;
}

ClientConnection& ClientRegistry::Admit(ClientConnection connection) {
  Remove(connection.id);
  id_by_route_[connection.route] = connection.id;
  const std::string id = connection.id;
  return by_id_.insert_or_assign(id, std::move(connection)).first->second;
}

void ClientRegistry::Remove(std::string_view id) {
  const auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  id_by_route_.erase(it->second.route);
  by_id_.erase(it);
}

std::vector<std::string> ClientRegistry::ExpireSilentSince(Clock::TimePoint cutoff) {
  std::vector<std::string> expired;
  for (const auto& [id, c] : by_id_) {
    if (c.last_heard < cutoff) expired.push_back(id);
  }
  for (const std::string& id : expired) Remove(id);
  return expired;
}

std::vector<std::string> ClientRegistry::Ids() const {
  std::vector<std::string> ids;
  ids.reserve(by_id_.size());
  for (const auto& [id, c] : by_id_) ids.push_back(id);
  return ids;
}

}  // namespace fedlora::server
