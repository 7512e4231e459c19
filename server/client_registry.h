// client_registry.h — the clients the coordinator can reach right now.
//
// Knows who is connected (by client id and by ZeroMQ routing id), their session, sequence
// numbers, liveness and Hello. Knows nothing about rounds, strategies or the wire format.
//
// Thread-compatible: owned by the coordinator's loop thread, no internal locking.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/wire/messages.h"

namespace fedlora::server {

struct ClientConnection {
  std::string id;                 // The client's name from its Hello.
  std::string route;              // ROUTER routing id of the current connection (opaque bytes).
  std::string key;                // CURVE: the connection's public key (Z85 ZAP User-Id); else "".
  std::uint64_t session_id = 0;
  std::uint64_t last_sequence_in = 0;  // Highest sequence number received this session.
  std::uint64_t next_sequence_out = 1;
  Clock::TimePoint last_heard{};
  Clock::TimePoint last_sent{};
  wire::Hello hello;
  wire::AdapterPlan plan;  // LoRA depth and ranks from the rank policy, sent in the Welcome.
  // Base-correction version the client's weights are at, as far as we know: from its Hello,
  // then the target of every BaseUpdate sent (tasks are applied in order). kUnknownVersion
  // after the client reported a mismatch, which forces a rebase.
  std::uint64_t base_version = 0;
  // Strategy cache keys the client confirmed holding this session (ClientInfo::cached).
  std::set<std::string, std::less<>> cached;
};

inline constexpr std::uint64_t kUnknownVersion = std::numeric_limits<std::uint64_t>::max();

// The liveness rule: clients not heard from since before this cutoff are gone. `window` is
// heartbeat_interval_ms x heartbeat_liveness. `caught_up` is when the coordinator last read every
// queued message: while it falls behind (persisting a burst of uploads, each fsynced before its
// Ack), a live client's heartbeat may sit unread in its queue, so silence is measured up to then,
// not up to `now` (measured: 1,000 CURVE clients lost 2,312 live sessions in 10 rounds without
// this). A backlog that lasts longer than one window (a flood) protects nobody further: clients
// silent for two windows are gone whatever the queue holds.
Clock::TimePoint SilenceCutoff(Clock::TimePoint now, Clock::TimePoint caught_up,
                               std::chrono::steady_clock::duration window);

class ClientRegistry {
 public:
  ClientConnection* FindByRoute(std::string_view route);
  ClientConnection* FindById(std::string_view id);

  // Registers `connection`, replacing any earlier connection of the same id (a reconnect).
  ClientConnection& Admit(ClientConnection connection);
  void Remove(std::string_view id);

  // Removes and returns the ids of clients silent since before `cutoff`, sorted.
  std::vector<std::string> ExpireSilentSince(Clock::TimePoint cutoff);

  std::vector<std::string> Ids() const;  // Sorted.
  std::size_t size() const { return by_id_.size(); }
  std::map<std::string, ClientConnection, std::less<>>& all() { return by_id_; }
  const std::map<std::string, ClientConnection, std::less<>>& all() const { return by_id_; }

 private:
  std::map<std::string, ClientConnection, std::less<>> by_id_;
  std::map<std::string, std::string, std::less<>> id_by_route_;
};

}  // namespace fedlora::server
