// fleet_model.h — the simulated fleet's hardware, network and availability, and the virtual
// clock that turns them into round times.
//
// fedlora-sim trains every virtual client on this machine, so the wall time of a round says how
// fast this machine is, not how long the round would take on a fleet of phones or edge boxes.
// The fleet model gives each client i a profile — training throughput (predicted tokens per
// second), downlink and uplink bandwidth, latency, availability and dropout — drawn from
// configured distributions with a seed (or read from a trace file), and plans every task from it:
//
//   finish = latency + download bytes / downlink + tokens / throughput + upload bytes / uplink
//
// A client that is offline when its task arrives (probability 1 − availability), that drops out
// (probability dropout) or whose finish time exceeds the virtual deadline declines the task
// (wire TASK_DECLINED); the real coordinator then counts it as failed, exactly as it would a
// client that never answered, and goes on with the quorum or retries. The round's virtual time
// is the slowest reporter's finish time, or the deadline when a straggler or dropout kept the
// coordinator waiting for it; each retry attempt adds a full deadline before it. Offline clients
// cost no time: a real coordinator selects among clients that checked in.
//
// Torch-free. Thread-safe: Plan and Record are called from every session's thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/config/yaml_config.h"
#include "common/status.h"

namespace fedlora::sim {

// A per-client quantity: constant, uniform on [min, max], or log-normal with the given median
// and sigma (of the underlying normal).
struct Distribution {
  enum class Kind { kConstant, kUniform, kLogNormal };
  Kind kind = Kind::kConstant;
  double value = 0;             // kConstant.
  double min = 0, max = 0;      // kUniform.
  double median = 0, sigma = 0; // kLogNormal.

  double Draw(std::mt19937_64& rng) const;
  std::string ToString() const;  // "lognormal(median 2e4, sigma 0.7)"
};

struct FleetConfig {
  bool enabled = false;                  // True when the `fleet` section is present.
  std::uint64_t seed = 0;                // Profiles and per-task draws.
  Distribution tokens_per_second;        // Training throughput, predicted tokens per second.
  Distribution downlink_mbps;            // Megabits per second (10^6 bits).
  Distribution uplink_mbps;
  Distribution latency_ms;               // Once per task.
  double availability = 1.0;             // Probability a client is online when tasked.
  double dropout = 0.0;                  // Probability a client drops out of a task it took.
  double deadline_s = 0;                 // Virtual deadline per round attempt; 0 = none.
  // Optional CSV with a header line: `client` (index) and any of tokens_per_second,
  // downlink_mbps, uplink_mbps, latency_ms, availability, dropout. Listed clients take these
  // values instead of draws; unlisted columns and clients keep their draws.
  std::string trace;
};

// Reads the `fleet` section (absent: enabled = false). Errors name the key.
Status ParseFleetConfig(const config::ConfigSection& section, FleetConfig* out);

struct ClientProfile {
  double tokens_per_second = 0;
  double downlink_mbps = 0;
  double uplink_mbps = 0;
  double latency_ms = 0;
  double availability = 1;
  double dropout = 0;
};

enum class TaskOutcome { kReported, kOffline, kDropped, kStraggler };

struct TaskPlan {
  TaskOutcome outcome = TaskOutcome::kReported;
  double download_s = 0, compute_s = 0, upload_s = 0;
  double finish_s = 0;  // Virtual seconds from the task's dispatch to its upload's arrival.
  std::string reason;   // Why a task is declined ("offline", ...); empty when reported.
};

// Round figures for metrics.jsonl's "simulation" object.
struct RoundTiming {
  double virtual_seconds = 0;
  std::uint32_t reported = 0, offline = 0, dropped = 0, stragglers = 0;
  double median_finish_s = 0;  // Over reporters.
  double max_finish_s = 0;
};

class FleetModel {
 public:
  // Draws (and reads from config.trace) the profiles of clients 0..num_clients-1. Errors name
  // the trace file, line and column, or the config key.
  static Result<std::unique_ptr<FleetModel>> Make(const FleetConfig& config,
                                                  std::uint32_t num_clients);

  const FleetConfig& config() const { return config_; }
  const ClientProfile& profile(std::uint32_t client) const { return profiles_.at(client); }
  double median_tokens_per_second() const { return median_tokens_per_second_; }

  // The fate of client `client`'s `nth` task (0, 1, ... over the run) of `round`, which moves
  // `down_bytes` to the client, trains `tokens` predicted tokens and moves `up_bytes` back.
  // Deterministic in (seed, client, round, nth). A client that `checked_in` for the round
  // (Online said so) is never offline; it may still drop out or miss the deadline.
  TaskPlan Plan(std::uint32_t client, std::uint64_t round, std::uint64_t nth,
                std::uint64_t down_bytes, std::uint64_t tokens, std::uint64_t up_bytes,
                bool checked_in = false) const;

  // Whether client `client` is online to check in for `round` (probability: its availability).
  // Deterministic in (seed, client, round); independent of Plan's draws.
  bool Online(std::uint32_t client, std::uint64_t round) const;

  // Records a task's outcome for its round's timing.
  void Record(std::uint64_t round, const TaskPlan& plan);
  // The timing of `round` from its records (which are then dropped), given the coordinator's
  // attempts for it.
  RoundTiming CloseRound(std::uint64_t round, std::uint32_t attempts);

 private:
  FleetModel() = default;

  FleetConfig config_;
  std::vector<ClientProfile> profiles_;
  double median_tokens_per_second_ = 0;
  std::mutex mu_;
  std::map<std::uint64_t, std::vector<TaskPlan>> records_;
};

}  // namespace fedlora::sim
