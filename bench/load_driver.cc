// bench/load_driver — many real client sessions against one real fedlora-coordinator process.
// (Near 700 lines: a self-contained benchmark program, peer protocol, sampling and report.)
//
// Each session is a lightweight protocol peer: its own DEALER socket over TCP with its own CURVE
// key pair (pinning the coordinator's key), speaking the wire protocol through the project's codec
// (common/wire/codec.h) and transport (common/net/zmq_transport.h). A peer says Hello with a tiny
// model layout, answers every RoundTask with an Update holding the task's tensors (small
// deterministic values), every EvalTask with an EvalResult, heartbeats while welcomed, and answers
// the coordinator's Bye with its own. scripts/load.sh runs it (keys, configuration, coordinator).
//
//   fedlora-load-driver enroll --clients 1000 --dir keys
//       key pairs keys/load-0000.key_secret ... (common/crypto/curve_keys.h) and
//       keys/authorized_clients enrolling each under its name
//   fedlora-load-driver run --coordinator tcp://127.0.0.1:PORT --server-key keys/coordinator.key
//       --keys keys --clients 1000 --state-dir STATE --pid PID [--threads 4] [--timeout-s 1800]
//
// `run` samples the coordinator's memory (/proc/PID/status: VmRSS, VmHWM) and CPU time, times
// each round from the peers' side, counts messages, and after the coordinator's Bye reads
// STATE/metrics.jsonl: every upload a peer got an Ack for must be among the uploads its round
// aggregated (the round's `weights`). Prints a Markdown table. Exit status: 0 when every session
// finished and no acknowledged upload is missing, 1 otherwise, 2 on usage errors.
//
// Peers are spread over --threads threads, each with its own ZeroMQ context (a context opens at
// most ZMQ_MAX_SOCKETS = 1024 sockets); RLIMIT_NOFILE is raised to its hard limit.
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto/curve_keys.h"
#include "common/fs.h"
#include "common/net/zmq_transport.h"
#include "common/wire/chunk_assembler.h"
#include "common/wire/codec.h"

namespace {

using namespace fedlora;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string PeerName(int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "load-%04d", i);
  return buf;
}

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---- the coordinator process, from /proc ------------------------------------------------------

struct ProcSample {
  bool ok = false;
  std::uint64_t rss_kb = 0, hwm_kb = 0;
  double cpu_s = 0;
};

ProcSample SampleProcess(int pid) {
  ProcSample s;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("VmRSS:")) s.rss_kb = std::stoull(line.substr(6));
    if (line.starts_with("VmHWM:")) s.hwm_kb = std::stoull(line.substr(6));
  }
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const std::size_t close = text.rfind(')');  // The command name may hold spaces.
  if (close != std::string::npos) {
    std::istringstream fields(text.substr(close + 2));
    std::string f;
    std::uint64_t utime = 0, stime = 0;
    for (int i = 3; fields >> f; ++i) {  // Field 3 is the state; 14 utime, 15 stime.
      if (i == 14) utime = std::stoull(f);
      if (i == 15) {
        stime = std::stoull(f);
        break;
      }
    }
    s.cpu_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  s.ok = s.rss_kb > 0;
  return s;
}

// ---- one peer -----------------------------------------------------------------------------------

// What the peers of one thread saw of each round: first and last task receipt, last Ack.
struct RoundTimes {
  SteadyClock::time_point first_task = SteadyClock::time_point::max();
  SteadyClock::time_point last_task = SteadyClock::time_point::min();
  SteadyClock::time_point last_ack = SteadyClock::time_point::min();
  SteadyClock::time_point first_eval = SteadyClock::time_point::max();
  std::uint64_t tasks = 0, acks = 0, evals = 0;
  void Merge(const RoundTimes& o) {
    first_task = std::min(first_task, o.first_task);
    last_task = std::max(last_task, o.last_task);
    last_ack = std::max(last_ack, o.last_ack);
    first_eval = std::min(first_eval, o.first_eval);
    tasks += o.tasks;
    acks += o.acks;
    evals += o.evals;
  }
};

struct ThreadStats {
  std::uint64_t sent = 0, received = 0, bytes_sent = 0, bytes_received = 0;
  std::uint64_t welcomed = 0, byes = 0, undecodable = 0, send_failures = 0;
  std::uint64_t rehellos = 0;       // Sessions the coordinator went silent on: Hello again.
  std::uint64_t other_session = 0;  // Messages not of the peer's session (ignored).
  std::map<std::string, std::uint64_t> errors;  // Error code name -> count.
  std::vector<std::string> first_errors;
  std::map<std::uint64_t, RoundTimes> rounds;
  std::map<std::uint64_t, std::set<std::string>> acked;  // Round -> peers with an acked upload.
  SteadyClock::time_point last_welcome = SteadyClock::time_point::min();
  SteadyClock::time_point last_bye = SteadyClock::time_point::min();
};

struct Options {
  std::string endpoint;
  crypto::CurvePublicKey server_key;
  std::string digest;
  std::vector<wire::ModuleInfo> modules;
  milliseconds hello_retry{30000};
  std::uint64_t chunk_bytes = 8ull << 20;  // Uploads with more tensor bytes go out in chunks.
};

class Peer {
 public:
  Peer(int index, std::shared_ptr<const crypto::CurveKeyPair> keys)
      : index_(index), name_(PeerName(index)), keys_(std::move(keys)) {}

  Status Open(net::Context& context, const Options& options) {
    net::SocketOptions so;
    so.curve = net::CurveOptions{keys_, options.server_key, ""};
    FEDLORA_ASSIGN_OR_RETURN(socket_, net::Socket::Open(context, net::SocketKind::kDealer, so));
    return socket_.Connect(options.endpoint);
  }

  void SayHello(const Options& options, ThreadStats& stats) {
    wire::Hello hello;
    hello.client_name = name_;
    hello.software_version = "fedlora-load-driver";
    hello.base_model_sha256 = options.digest;
    hello.capabilities = wire::Capabilities{"cpu", 1ull << 30, 0, 100, 1.0, false};
    hello.modules = options.modules;
    session_ = 0;
    hello_sent_ = SteadyClock::now();
    chunk_bytes_ = options.chunk_bytes;
    inbound_.reset();
    Send(std::move(hello), stats);
  }

  // Drains the socket; handles every message.
  void OnReadable(ThreadStats& stats) {
    while (true) {
      Result<std::optional<net::Message>> m = socket_.Receive(milliseconds(0));
      if (!m.ok() || !m->has_value()) return;
      ++stats.received;
      stats.bytes_received += (*m)->total_bytes();
      wire::DecodeLimits limits;
      limits.require_digests = false;  // A CURVE coordinator leaves them out.
      Result<wire::Envelope> env = wire::Decode((*m)->frames(), limits);
      if (!env.ok()) {
        ++stats.undecodable;
        continue;
      }
      // A chunked task is put together first (proto/fedlora.capnp, "Chunked transfer").
      if (env->chunked) {
        Result<wire::ChunkAssembler> opened = wire::ChunkAssembler::InMemory(std::move(env).value());
        if (opened.ok()) inbound_.emplace(std::move(opened).value());
        if (!opened.ok()) ++stats.undecodable;
        continue;
      }
      if (const auto* chunk = std::get_if<wire::Chunk>(&env->body)) {
        if (!inbound_ || !inbound_->Accept(*chunk).ok()) {
          ++stats.undecodable;
          inbound_.reset();
          continue;
        }
        if (!inbound_->complete()) continue;
        Result<wire::Envelope> whole = inbound_->Finish();
        inbound_.reset();
        if (!whole.ok()) {
          ++stats.undecodable;
          continue;
        }
        env = std::move(whole);
      }
      Handle(std::move(env).value(), stats);
    }
  }

  // Heartbeats while welcomed; a Hello again if no Welcome came, or (fedlora-client's liveness
  // rule) when the session has been silent for interval x liveness: the coordinator dropped it.
  void OnTimer(const Options& options, ThreadStats& stats) {
    if (done_) return;
    const SteadyClock::time_point now = SteadyClock::now();
    if (!welcomed_) {
      if (now - hello_sent_ > options.hello_retry) SayHello(options, stats);
      return;
    }
    if (now - last_heard_ >= heartbeat_ * liveness_) {
      ++stats.rehellos;
      welcomed_ = false;
      SayHello(options, stats);
      return;
    }
    if (now - last_sent_ >= heartbeat_) Send(wire::Heartbeat{}, stats);
  }

  bool done() const { return done_; }
  net::Socket& socket() { return socket_; }

 private:
  // Sends `body` (as a head and chunks when its tensors exceed chunk_bytes); returns the
  // sequence number of the message (the head's).
  std::uint64_t Send(wire::Body body, ThreadStats& stats) {
    wire::Envelope env{wire::kProtocolVersion, session_, ++sequence_, std::move(body)};
    const TensorMap* tensors = wire::TensorsOf(env.body);
    if (tensors != nullptr && PayloadBytes(*tensors) > chunk_bytes_) {
      env.chunked = wire::ChunkedHead{.chunk_bytes = chunk_bytes_};
    }
    const wire::EncodedMessage encoded = wire::Encode(env, {.tensor_digests = false});
    std::vector<wire::EncodedMessage> messages;
    for (std::uint32_t i = 0; encoded.chunked && i < encoded.chunked->chunk_count; ++i) {
      messages.push_back(wire::EncodeChunk(
          session_, ++sequence_,
          wire::Chunk{env.sequence, i, std::uint64_t{i} * encoded.chunked->chunk_bytes, {}},
          wire::ChunkPieces(encoded, i)));
    }
    bool ok = socket_.Send(encoded.frames()).ok();
    std::uint64_t bytes = encoded.total_bytes();
    for (const wire::EncodedMessage& m : messages) {
      ok = ok && socket_.Send(m.frames()).ok();
      bytes += m.total_bytes();
    }
    if (ok) {
      ++stats.sent;
      stats.bytes_sent += bytes;
    } else {
      ++stats.send_failures;
    }
    last_sent_ = SteadyClock::now();
    return env.sequence;
  }

  void Handle(wire::Envelope env, ThreadStats& stats) {
    const SteadyClock::time_point now = SteadyClock::now();
    if (welcomed_ &&
        env.session_id != session_) {  // E.g. refusals of a dropped session's messages.
      ++stats.other_session;
      return;
    }
    last_heard_ = now;
    if (auto* welcome = std::get_if<wire::Welcome>(&env.body)) {
      if (!ever_welcomed_) {
        ++stats.welcomed;
        stats.last_welcome = std::max(stats.last_welcome, now);  // First Welcomes only.
      }
      ever_welcomed_ = true;
      welcomed_ = true;
      session_ = env.session_id;
      heartbeat_ = milliseconds(welcome->heartbeat_interval_ms);
      liveness_ = std::max<std::uint32_t>(welcome->heartbeat_liveness, 1);
    } else if (auto* task = std::get_if<wire::RoundTask>(&env.body)) {
      RoundTimes& t = stats.rounds[task->round];
      t.first_task = std::min(t.first_task, now);
      t.last_task = std::max(t.last_task, now);
      ++t.tasks;
      update_sequence_ = Send(Answer(*task), stats);
      update_round_ = task->round;
    } else if (auto* ack = std::get_if<wire::Ack>(&env.body)) {
      if (ack->acked_sequence == update_sequence_ && ack->round == update_round_) {
        RoundTimes& t = stats.rounds[ack->round];
        t.last_ack = std::max(t.last_ack, now);
        ++t.acks;
        stats.acked[ack->round].insert(name_);
      }
    } else if (auto* eval = std::get_if<wire::EvalTask>(&env.body)) {
      RoundTimes& t = stats.rounds[eval->round];
      t.first_eval = std::min(t.first_eval, now);
      ++t.evals;
      wire::EvalResult result;
      result.round = eval->round;
      result.loss = 2.0 + 0.001 * (index_ % 10);
      result.num_tokens = 100;
      result.num_examples = 10;
      result.ticket = eval->ticket;
      Send(std::move(result), stats);
    } else if (auto* error = std::get_if<wire::Error>(&env.body)) {
      const std::string code(wire::ErrorCodeName(error->code));
      ++stats.errors[code];
      if (stats.first_errors.size() < 5) {
        stats.first_errors.push_back(name_ + ": " + code + ": " + error->message);
      }
      // Refused before or after a Welcome (SHUTTING_DOWN, a dropped session): start over.
      if (error->code == wire::ErrorCode::kShuttingDown || !welcomed_) welcomed_ = false;
    } else if (std::holds_alternative<wire::Bye>(env.body)) {
      if (!done_) {
        Send(wire::Bye{"load driver done"}, stats);
        ++stats.byes;
        stats.last_bye = std::max(stats.last_bye, now);
      }
      done_ = true;
    }
  }

  // The task's adapter tensors (not its base corrections), in its upload dtype, with small
  // values that depend only on the peer and the element.
  wire::Update Answer(const wire::RoundTask& task) const {
    wire::Update u;
    u.round = task.round;
    u.ticket = task.ticket;
    const std::uint64_t batch = std::max<std::uint32_t>(task.train.batch_size, 1);
    u.num_samples = task.train.local_epochs > 0 ? batch : task.train.local_steps * batch;
    u.num_examples = 100;
    u.metrics = {{"train_loss", 2.0 + 0.001 * (index_ % 10)}};
    for (const auto& [name, t] : task.tensors) {
      if (name.starts_with("base.")) continue;
      std::vector<double> v(static_cast<std::size_t>(NumElements(t.shape).value()));
      for (std::size_t i = 0; i < v.size(); ++i) {
        v[i] = 0.001 * static_cast<double>(static_cast<int>((index_ + i) % 13) - 6);
      }
      u.tensors[name] = FromDoubles(task.train.upload_dtype, t.shape, v);
    }
    return u;
  }

  int index_;
  std::string name_;
  std::shared_ptr<const crypto::CurveKeyPair> keys_;
  net::Socket socket_;
  std::uint64_t session_ = 0, sequence_ = 0;
  std::uint64_t update_sequence_ = 0, update_round_ = 0;
  std::uint64_t chunk_bytes_ = 8ull << 20;
  std::optional<wire::ChunkAssembler> inbound_;  // A chunked task arriving.
  bool welcomed_ = false, ever_welcomed_ = false, done_ = false;
  milliseconds heartbeat_{1000};
  std::uint32_t liveness_ = 5;
  SteadyClock::time_point hello_sent_, last_sent_, last_heard_;
};

// One thread's peers, on one context, until each got Bye or `stop`.
void RunPeers(std::vector<int> indices,
              const std::vector<std::shared_ptr<const crypto::CurveKeyPair>>& keys,
              const Options& options, const std::atomic<bool>& stop, std::atomic<int>& welcomed,
              std::atomic<int>& finished, ThreadStats& stats) {
  net::Context context;
  std::vector<std::unique_ptr<Peer>> peers;
  for (int i : indices) {
    auto peer = std::make_unique<Peer>(i, keys[static_cast<std::size_t>(i)]);
    if (Status s = peer->Open(context, options); !s.ok()) {
      std::cerr << "fedlora-load-driver: " << PeerName(i) << ": " << s.ToString() << "\n";
      continue;
    }
    peer->SayHello(options, stats);
    peers.push_back(std::move(peer));
  }
  std::vector<net::PollItem> items(peers.size());
  std::size_t done = 0;
  while (!stop.load() && done < peers.size()) {
    for (std::size_t k = 0; k < peers.size(); ++k) items[k] = net::PollItem{&peers[k]->socket()};
    if (!net::Poll(items, milliseconds(50)).ok()) break;
    const std::uint64_t welcomed_before = stats.welcomed;
    for (std::size_t k = 0; k < peers.size(); ++k) {
      if (items[k].readable) peers[k]->OnReadable(stats);
      peers[k]->OnTimer(options, stats);
    }
    welcomed += static_cast<int>(stats.welcomed - welcomed_before);
    const std::size_t now_done = static_cast<std::size_t>(
        std::count_if(peers.begin(), peers.end(), [](const auto& p) { return p->done(); }));
    finished += static_cast<int>(now_done - done);
    done = now_done;
  }
  for (auto& p : peers) p->socket().SetLinger(200);  // Let the last Byes out.
}

// ---- commands -----------------------------------------------------------------------------------

int Enroll(int clients, const std::string& dir) {
  std::string lines = "# fedlora-load-driver enroll: " + std::to_string(clients) + " load peers\n";
  for (int i = 0; i < clients; ++i) {
    Result<crypto::CurveKeyPair> pair = crypto::WriteNewKeyFiles(dir, PeerName(i), true);
    if (!pair.ok()) {
      std::cerr << "fedlora-load-driver: " << pair.status().ToString() << "\n";
      return 1;
    }
    lines += PeerName(i) + " " + pair->public_key.Z85() + "\n";
  }
  if (Status s = fs::WriteFileAtomic(dir + "/authorized_clients", lines); !s.ok()) {
    std::cerr << "fedlora-load-driver: " << s.ToString() << "\n";
    return 1;
  }
  std::cout << clients << " key pairs in " << dir << ", enrolled in " << dir
            << "/authorized_clients\n";
  return 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t k = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(k, v.size() - 1)];
}

int Run(const Options& options, const std::string& keys_dir, int clients, int threads, int pid,
        const std::string& state_dir, int timeout_s) {
  // Every peer socket holds a TCP connection and a mailbox: raise the open-file limit.
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < static_cast<rlim_t>(3 * clients + 64)) {
    std::cerr << "fedlora-load-driver: RLIMIT_NOFILE is " << limit.rlim_cur << ", too low for "
              << clients << " sessions\n";
    return 1;
  }
  if ((clients + threads - 1) / threads > 1000) {
    std::cerr << "fedlora-load-driver: more than 1000 peers per thread would exceed a ZeroMQ "
                 "context's 1024 sockets; raise --threads\n";
    return 2;
  }
  std::vector<std::shared_ptr<const crypto::CurveKeyPair>> keys;
  for (int i = 0; i < clients; ++i) {
    Result<crypto::CurveKeyPair> pair =
        crypto::LoadSecretKeyFile(crypto::KeyFilesFor(keys_dir, PeerName(i)).secret_path);
    if (!pair.ok()) {
      std::cerr << "fedlora-load-driver: " << pair.status().ToString() << "\n";
      return 1;
    }
    keys.push_back(std::make_shared<const crypto::CurveKeyPair>(std::move(pair).value()));
  }

  std::atomic<bool> stop{false};
  std::atomic<int> welcomed{0}, finished{0};
  std::vector<ThreadStats> stats(static_cast<std::size_t>(threads));
  std::vector<std::thread> workers;
  const SteadyClock::time_point start = SteadyClock::now();
  for (int t = 0; t < threads; ++t) {
    std::vector<int> mine;
    for (int i = t; i < clients; i += threads) mine.push_back(i);
    workers.emplace_back(RunPeers, std::move(mine), std::cref(keys), std::cref(options),
                         std::cref(stop), std::ref(welcomed), std::ref(finished),
                         std::ref(stats[static_cast<std::size_t>(t)]));
  }
  // The coordinator's memory and CPU, sampled every 100 ms while the sessions run.
  ProcSample peak, last;
  std::vector<std::pair<SteadyClock::time_point, std::uint64_t>> rss_series;  // (time, VmRSS kB)
  std::uint64_t rss_after_welcome_kb = 0;
  SteadyClock::time_point next_report = start + std::chrono::seconds(5);
  bool timed_out = false;
  while (finished.load() < clients) {
    std::this_thread::sleep_for(milliseconds(100));
    if (pid > 0) {
      const ProcSample s = SampleProcess(pid);
      if (s.ok) {
        last = s;
        rss_series.emplace_back(SteadyClock::now(), s.rss_kb);
        peak.rss_kb = std::max(peak.rss_kb, s.rss_kb);
        peak.hwm_kb = std::max(peak.hwm_kb, s.hwm_kb);
        if (rss_after_welcome_kb == 0 && welcomed.load() == clients)
          rss_after_welcome_kb = s.rss_kb;
      }
    }
    const SteadyClock::time_point now = SteadyClock::now();
    if (now >= next_report) {
      std::cerr << "fedlora-load-driver: " << static_cast<int>(Seconds(now - start))
                << " s: " << welcomed.load() << " welcomed, " << finished.load()
                << " done; coordinator RSS " << last.rss_kb / 1024 << " MiB\n";
      next_report = now + std::chrono::seconds(5);
    }
    if (now - start > std::chrono::seconds(timeout_s)) {
      timed_out = true;
      break;
    }
  }
  stop = true;
  for (auto& w : workers) w.join();
  const SteadyClock::time_point end = SteadyClock::now();

  ThreadStats all;
  for (const ThreadStats& s : stats) {
    all.sent += s.sent;
    all.received += s.received;
    all.bytes_sent += s.bytes_sent;
    all.bytes_received += s.bytes_received;
    all.welcomed += s.welcomed;
    all.byes += s.byes;
    all.undecodable += s.undecodable;
    all.send_failures += s.send_failures;
    all.rehellos += s.rehellos;
    all.other_session += s.other_session;
    for (const auto& [code, n] : s.errors) all.errors[code] += n;
    for (const auto& e : s.first_errors) {
      if (all.first_errors.size() < 5) all.first_errors.push_back(e);
    }
    for (const auto& [r, t] : s.rounds) all.rounds[r].Merge(t);
    for (const auto& [r, names] : s.acked) all.acked[r].insert(names.begin(), names.end());
    all.last_welcome = std::max(all.last_welcome, s.last_welcome);
    all.last_bye = std::max(all.last_bye, s.last_bye);
  }

  // What the coordinator committed: each round's aggregated clients (its `weights`).
  std::map<std::uint64_t, nlohmann::json> committed;
  if (Result<std::string> text = fs::ReadFile(state_dir + "/metrics.jsonl"); text.ok()) {
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        nlohmann::json j = nlohmann::json::parse(line);
        const auto round = j.at("round").get<std::uint64_t>();
        committed[round] = std::move(j);
      } catch (const nlohmann::json::exception& e) {
        std::cerr << "fedlora-load-driver: metrics.jsonl: " << e.what() << "\n";
      }
    }
  } else {
    std::cerr << "fedlora-load-driver: " << text.status().ToString() << "\n";
  }

  std::uint64_t acked_total = 0, committed_total = 0, lost = 0, unacked_committed = 0;
  std::vector<double> coordinator_s, driver_s;
  // The coordinator's RSS when a round's first task arrived (the last sample before it).
  const auto rss_at = [&](SteadyClock::time_point t) {
    std::uint64_t kb = 0;
    for (const auto& [when, rss] : rss_series) {
      if (when > t) break;
      kb = rss;
    }
    return static_cast<double>(kb) / 1024;
  };
  std::printf(
      "\n| round | tasks received | acks received | clients in commit | lost acked uploads | "
      "coordinator round s | driver task-to-next-task s | coordinator RSS at round start MiB |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& [r, t] : all.rounds) {
    if (r == 0) continue;  // Round 0 evaluates the initial adapter: no uploads.
    const auto it = committed.find(r);
    std::set<std::string> in_commit;
    double seconds = 0;
    if (it != committed.end()) {
      for (const auto& [id, w] : it->second.at("weights").items()) in_commit.insert(id);
      seconds = it->second.at("seconds").get<double>();
      coordinator_s.push_back(seconds);
    }
    std::uint64_t missing = 0;
    for (const std::string& name : all.acked[r]) missing += in_commit.contains(name) ? 0 : 1;
    for (const std::string& name : in_commit)
      unacked_committed += all.acked[r].contains(name) ? 0 : 1;
    const auto next = all.rounds.find(r + 1);
    const SteadyClock::time_point until =
        next != all.rounds.end() ? next->second.first_task : all.last_bye;
    const double period = Seconds(until - t.first_task);
    driver_s.push_back(period);
    acked_total += all.acked[r].size();
    committed_total += in_commit.size();
    lost += missing;
    std::printf("| %llu | %llu | %zu | %zu | %llu | %.2f | %.2f | %.1f |\n",
                static_cast<unsigned long long>(r), static_cast<unsigned long long>(t.tasks),
                all.acked[r].size(), in_commit.size(), static_cast<unsigned long long>(missing),
                seconds, period, rss_at(t.first_task));
  }
  const double wall = Seconds(end - start);
  const double messages = static_cast<double>(all.sent + all.received);
  std::printf("\n| figure | value |\n| --- | --- |\n");
  std::printf("| sessions (CURVE, TCP loopback) | %d, %d threads |\n", clients, threads);
  std::printf("| welcomed / finished (Bye) | %llu / %llu |\n",
              static_cast<unsigned long long>(all.welcomed),
              static_cast<unsigned long long>(all.byes));
  std::printf("| all sessions welcomed (CURVE handshake + Hello) after | %.2f s |\n",
              Seconds(all.last_welcome - start));
  std::printf("| rounds committed (metrics.jsonl, incl. round 0) | %zu |\n", committed.size());
  std::printf("| wall time (first Hello to last Bye) | %.1f s |\n", wall);
  std::printf("| coordinator peak RSS (VmHWM) | %.1f MiB |\n",
              static_cast<double>(peak.hwm_kb) / 1024);
  std::printf("| coordinator RSS once all were welcomed / at the end | %.1f / %.1f MiB |\n",
              static_cast<double>(rss_after_welcome_kb) / 1024,
              static_cast<double>(last.rss_kb) / 1024);
  std::printf("| coordinator CPU time | %.1f s |\n", last.cpu_s);
  std::printf("| round latency, coordinator (p50 / p95 / max) | %.2f / %.2f / %.2f s |\n",
              Percentile(coordinator_s, 0.5), Percentile(coordinator_s, 0.95),
              Percentile(coordinator_s, 1.0));
  std::printf("| round period, driver (p50 / p95 / max) | %.2f / %.2f / %.2f s |\n",
              Percentile(driver_s, 0.5), Percentile(driver_s, 0.95), Percentile(driver_s, 1.0));
  std::printf("| messages (driver sent / received) | %llu / %llu |\n",
              static_cast<unsigned long long>(all.sent),
              static_cast<unsigned long long>(all.received));
  std::printf("| messages/s (both directions, over the wall time) | %.0f |\n", messages / wall);
  std::printf("| bytes up / down | %.1f / %.1f MB |\n", static_cast<double>(all.bytes_sent) / 1e6,
              static_cast<double>(all.bytes_received) / 1e6);
  std::printf("| uploads acknowledged / committed | %llu / %llu |\n",
              static_cast<unsigned long long>(acked_total),
              static_cast<unsigned long long>(committed_total));
  std::printf("| acknowledged uploads missing from their commit | %llu |\n",
              static_cast<unsigned long long>(lost));
  std::printf("| committed uploads whose Ack the driver did not see | %llu |\n",
              static_cast<unsigned long long>(unacked_committed));
  std::printf("| sessions dropped by the coordinator (peer said Hello again) | %llu |\n",
              static_cast<unsigned long long>(all.rehellos));
  std::printf("| messages for a dropped session (ignored) | %llu |\n",
              static_cast<unsigned long long>(all.other_session));
  std::printf("| send failures / undecodable messages | %llu / %llu |\n",
              static_cast<unsigned long long>(all.send_failures),
              static_cast<unsigned long long>(all.undecodable));
  std::string errors;
  for (const auto& [code, n] : all.errors)
    errors += (errors.empty() ? "" : ", ") + code + " " + std::to_string(n);
  std::printf("| Error messages received | %s |\n", errors.empty() ? "none" : errors.c_str());
  for (const std::string& e : all.first_errors) std::printf("  first errors: %s\n", e.c_str());
  std::fflush(stdout);
  if (timed_out) std::cerr << "fedlora-load-driver: timed out after " << timeout_s << " s\n";
  const bool ok = !timed_out && static_cast<int>(all.byes) == clients && lost == 0;
  return ok ? 0 : 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"fedlora-load-driver: many real client sessions against one fedlora-coordinator"};
  app.require_subcommand(1);
  int clients = 1000, threads = 4, pid = 0, timeout_s = 1800, layers = 2, dim = 64;
  std::string dir = "keys", endpoint, server_key_file, state_dir;
  std::string digest(64, 'a');
  CLI::App* enroll =
      app.add_subcommand("enroll", "Write key pairs and the authorized_clients file");
  enroll->add_option("--clients", clients)->capture_default_str();
  enroll->add_option("--dir", dir, "Key directory (authorized_clients goes there too)")
      ->capture_default_str();
  CLI::App* run = app.add_subcommand("run", "Run the sessions");
  run->add_option("--coordinator", endpoint, "tcp://HOST:PORT")->required();
  run->add_option("--server-key", server_key_file, "The coordinator's public key file")->required();
  run->add_option("--keys", dir, "Directory of the enrolled key pairs")->capture_default_str();
  run->add_option("--clients", clients)->capture_default_str();
  run->add_option("--threads", threads, "Threads (one ZeroMQ context each)")->capture_default_str();
  run->add_option("--pid", pid, "The coordinator's process id, for RSS and CPU sampling");
  run->add_option("--state-dir", state_dir, "The coordinator's state_dir")->required();
  run->add_option("--timeout-s", timeout_s)->capture_default_str();
  run->add_option("--digest", digest, "base_model_sha256 the coordinator expects");
  run->add_option("--layers", layers, "Layers of the declared model (q_proj, v_proj each)")
      ->capture_default_str();
  run->add_option("--dim", dim, "Hidden size of the declared model")->capture_default_str();
  std::uint64_t chunk_bytes = 8ull << 20;
  run->add_option("--chunk-bytes", chunk_bytes, "Uploads with more tensor bytes go in chunks")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (clients < 1 || threads < 1 || layers < 1 || dim < 1) {
    std::cerr << "fedlora-load-driver: --clients, --threads, --layers and --dim must be >= 1\n";
    return 2;
  }
  if (app.got_subcommand(enroll)) return Enroll(clients, dir);
  Options options;
  options.endpoint = endpoint;
  options.digest = digest;
  options.chunk_bytes = chunk_bytes;
  Result<crypto::CurvePublicKey> key = crypto::LoadPublicKeyFile(server_key_file);
  if (!key.ok()) {
    std::cerr << "fedlora-load-driver: " << key.status().ToString() << "\n";
    return 1;
  }
  options.server_key = *key;
  for (int l = 0; l < layers; ++l) {
    for (const char* m : {"q_proj", "v_proj"}) {
      options.modules.push_back(
          {"model.layers." + std::to_string(l) + ".self_attn." + m, dim, dim});
    }
  }
  return Run(options, dir, clients, threads, pid, state_dir, timeout_s);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "fedlora-load-driver: unexpected exception: " << e.what() << "\n";
    return 3;
  }
}
