// bench/ingest — a real coordinator receiving N uploads over TCP loopback, against the same bytes
// through raw ZeroMQ PUSH/PULL measured in the same run, with the coordinator's peak RSS.
//
// For each N (--clients 10,100,1000): the coordinator (FedAvg, plaintext loopback, one round,
// every client selected, quorum N, no evaluation) runs in a child process, so its VmHWM is its
// own. The driver (this process) opens N DEALER sessions that say Hello, receive their task
// (chunked, counted, not kept), and upload an adapter of --layers x {q_proj, v_proj} at --dim x
// --dim, rank --rank, f32 (32 x 2048 at rank 16: 16.8 MB), in --chunk-mb chunks, at most --window
// uploads in flight; timed from the first upload sent to the last Ack. Every upload is checked,
// hashed (SHA-256 per tensor), spooled, read back, validated, norm-bounded, folded, persisted
// with fsync and acknowledged: the whole path. The baseline streams the same bytes, in the same
// chunk size, from a PUSH to a PULL socket (each its own context and I/O thread).
// Prints one line per N:
//   n=<N> upload_mb=<S> uploads_per_s=<u> gbps=<x> raw_gbps=<y> ratio=<x/y>
//   coordinator_peak_rss_mb=<r> global_mb=<g> accumulator_mb=<a>
// (gbps: gigabits per second of upload payload). Not a test; numbers in docs/benchmarks.md.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "common/net/zmq_transport.h"
#include "common/wire/codec.h"
#include "server/coordinator.h"
#include "server/strategies/fedavg.h"

namespace {

using namespace fedlora;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double Seconds(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::uint64_t VmHwmKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6));
  }
  return 0;
}

std::vector<wire::ModuleInfo> Modules(int layers, std::int64_t dim) {
  std::vector<wire::ModuleInfo> out;
  for (int l = 0; l < layers; ++l) {
    for (const char* m : {"q_proj", "v_proj"}) {
      out.push_back({"model.layers." + std::to_string(l) + ".self_attn." + m, dim, dim});
    }
  }
  return out;
}

// ---- raw baseline ----------------------------------------------------------------------------

// Seconds to move `total` bytes in messages of `chunk` bytes from a PUSH to a PULL over TCP.
double RawPushPull(std::uint64_t total, std::uint64_t chunk) {
  net::Context pull_context, push_context;
  net::Socket pull = net::Socket::Open(pull_context, net::SocketKind::kPull).value();
  FEDLORA_CHECK(pull.Bind("tcp://127.0.0.1:*").ok());
  net::Socket push = net::Socket::Open(push_context, net::SocketKind::kPush).value();
  FEDLORA_CHECK(push.Connect(pull.LastEndpoint().value()).ok());
  const std::vector<std::byte> payload(chunk, std::byte{0x5a});
  const std::uint64_t count = (total + chunk - 1) / chunk;
  std::thread receiver([&] {
    for (std::uint64_t i = 0; i < count; ++i) {
      Result<std::optional<net::Message>> m = pull.Receive(milliseconds(60000));
      FEDLORA_CHECK_MSG(m.ok() && m->has_value(), "raw: no message within 60 s");
    }
  });
  const auto start = SteadyClock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t n = std::min(chunk, total - i * chunk);
    const std::vector<std::span<const std::byte>> frames = {std::span(payload).first(n)};
    while (!push.Send(frames).ok()) std::this_thread::yield();  // Queue full: wait for room.
  }
  receiver.join();
  return Seconds(start, SteadyClock::now());
}

// ---- the coordinator, in a child process -----------------------------------------------------

struct Setup {
  int clients = 10;
  int layers = 32;
  std::int64_t dim = 2048;
  std::uint32_t rank = 16;
  std::uint64_t chunk_bytes = 8ull << 20;
  std::string state_dir;
};

// Runs the coordinator; writes its endpoint, then (at exit) its VmHWM in kB, to `fd`.
[[noreturn]] void CoordinatorChild(const Setup& setup, int fd) {
  SetLogLevel(LogLevel::kWarn);
  server::CoordinatorConfig config;
  config.state_dir = setup.state_dir;
  config.rounds = 1;
  config.transport.bind = "tcp://127.0.0.1:*";
  config.transport.chunk_bytes = setup.chunk_bytes;
  // The driver's sessions wait their turn to upload without heartbeats.
  config.transport.heartbeat_liveness = 100000;
  config.round.min_clients = static_cast<std::uint32_t>(setup.clients);
  config.round.quorum = static_cast<std::uint32_t>(setup.clients);
  config.round.timeout_ms = 3600 * 1000;
  config.eval.enabled = false;
  config.lora = {.rank = setup.rank, .alpha = 32, .targets = {"q_proj", "v_proj"}};
  server::FedAvgConfig fedavg{.lora = config.lora, .train = config.train};
  net::Context context;
  SystemClock clock;
  server::Coordinator coordinator(config, std::make_unique<server::FedAvg>(fedavg), context, clock);
  FEDLORA_CHECK_MSG(coordinator.Start().ok(), "coordinator did not start");
  const std::string endpoint = coordinator.endpoint() + "\n";
  FEDLORA_CHECK(write(fd, endpoint.data(), endpoint.size()) ==
                static_cast<ssize_t>(endpoint.size()));
  const Status run = coordinator.Run();
  const std::string hwm = std::to_string(run.ok() ? VmHwmKb() : 0) + "\n";
  FEDLORA_CHECK(write(fd, hwm.data(), hwm.size()) == static_cast<ssize_t>(hwm.size()));
  _exit(run.ok() ? 0 : 1);
}

// One driver session: the protocol as far as this benchmark needs it.
struct Session {
  net::Socket socket;
  std::uint64_t session = 0, sequence = 0, last_in = 0;
  std::uint64_t round = 0, upload_sequence = 0;
  wire::TaskTicket ticket;
  std::uint32_t task_chunks_left = 0;
  bool welcomed = false, task_ready = false, uploaded = false, acked = false, bye = false;
};

void SendBody(Session& s, wire::Body body, std::uint64_t chunk_bytes) {
  wire::Envelope env{wire::kProtocolVersion, s.session, ++s.sequence, std::move(body)};
  const TensorMap* tensors = wire::TensorsOf(env.body);
  if (tensors != nullptr && PayloadBytes(*tensors) > chunk_bytes) {
    env.chunked = wire::ChunkedHead{.chunk_bytes = chunk_bytes};
  }
  const wire::EncodedMessage head = wire::Encode(env);
  FEDLORA_CHECK(s.socket.Send(head.frames()).ok());
  for (std::uint32_t i = 0; head.chunked && i < head.chunked->chunk_count; ++i) {
    const wire::EncodedMessage chunk = wire::EncodeChunk(
        s.session, ++s.sequence, wire::Chunk{env.sequence, i, i * chunk_bytes, {}},
        wire::ChunkPieces(head, i));
    while (!s.socket.Send(chunk.frames()).ok()) std::this_thread::yield();  // Queue full.
  }
}

struct Result1 {
  double seconds = 0;
  std::uint64_t upload_bytes = 0;
  std::uint64_t peak_rss_kb = 0;
};

Result1 CoordinatorIngest(const Setup& setup, int window) {
  int fds[2];
  FEDLORA_CHECK(pipe(fds) == 0);
  std::filesystem::remove_all(setup.state_dir);
  const pid_t child = fork();
  FEDLORA_CHECK(child >= 0);
  if (child == 0) {
    close(fds[0]);
    CoordinatorChild(setup, fds[1]);
  }
  close(fds[1]);
  FILE* from_child = fdopen(fds[0], "r");
  char line[512];
  FEDLORA_CHECK_MSG(fgets(line, sizeof(line), from_child) != nullptr, "coordinator failed");
  std::string endpoint(line);
  endpoint.pop_back();

  net::Context context;
  const std::vector<wire::ModuleInfo> modules = Modules(setup.layers, setup.dim);
  std::vector<Session> sessions(static_cast<std::size_t>(setup.clients));
  for (std::size_t i = 0; i < sessions.size(); ++i) {
    sessions[i].socket = net::Socket::Open(context, net::SocketKind::kDealer).value();
    FEDLORA_CHECK(sessions[i].socket.Connect(endpoint).ok());
    wire::Hello hello;
    hello.client_name = "ingest-" + std::to_string(i);
    hello.software_version = "bench-ingest";
    hello.base_model_sha256 = std::string(64, 'b');
    hello.capabilities = wire::Capabilities{"cpu", 1ull << 30, 0, 100, 1.0, false};
    hello.modules = modules;
    SendBody(sessions[i], std::move(hello), setup.chunk_bytes);
  }
  // One upload for everyone (only round and ticket differ): the driver's memory stays small.
  wire::Update upload;
  upload.num_samples = 8;
  upload.num_examples = 100;
  upload.metrics = {{"train_loss", 2.0}};
  bool upload_built = false;

  std::deque<std::size_t> ready;  // Sessions with their task, waiting to upload.
  std::size_t in_flight = 0, acked = 0, byes = 0;
  SteadyClock::time_point first_upload{}, last_ack{};
  const wire::DecodeLimits limits;
  std::vector<net::PollItem> items(sessions.size());
  while (byes < sessions.size()) {
    for (std::size_t i = 0; i < sessions.size(); ++i) items[i] = net::PollItem{&sessions[i].socket};
    FEDLORA_CHECK(net::Poll(items, milliseconds(1000)).ok());
    for (std::size_t i = 0; i < sessions.size(); ++i) {
      if (!items[i].readable) continue;
      Session& s = sessions[i];
      while (true) {
        Result<std::optional<net::Message>> m = s.socket.Receive(milliseconds(0));
        FEDLORA_CHECK(m.ok());
        if (!m->has_value()) break;
        Result<wire::Envelope> env = wire::Decode((*m)->frames(), limits);
        FEDLORA_CHECK_MSG(env.ok(), env.status().ToString());
        if (std::holds_alternative<wire::Welcome>(env->body)) {
          s.session = env->session_id;
          s.welcomed = true;
        } else if (auto* task = std::get_if<wire::RoundTask>(&env->body)) {
          s.round = task->round;
          s.ticket = task->ticket;
          FEDLORA_CHECK_MSG(env->chunked.has_value(), "expected a chunked task");
          s.task_chunks_left = env->chunked->chunk_count;
          if (!upload_built) {  // From the head's refs: names and shapes.
            for (const wire::TensorRef& ref : env->chunked->tensors) {
              std::vector<double> v(static_cast<std::size_t>(NumElements(ref.shape).value()),
                                    0.001);
              upload.tensors[ref.name] = FromDoubles(DType::kF32, ref.shape, v);
            }
            upload_built = true;
          }
        } else if (std::holds_alternative<wire::Chunk>(env->body)) {
          if (s.task_chunks_left > 0 && --s.task_chunks_left == 0) ready.push_back(i);
        } else if (const auto* ack = std::get_if<wire::Ack>(&env->body)) {
          FEDLORA_CHECK(ack->acked_sequence == s.upload_sequence);
          s.acked = true;
          ++acked;
          --in_flight;
          last_ack = SteadyClock::now();
        } else if (std::holds_alternative<wire::Bye>(env->body)) {
          if (!s.bye) ++byes;
          s.bye = true;
          SendBody(s, wire::Bye{"done"}, setup.chunk_bytes);
        } else if (const auto* error = std::get_if<wire::Error>(&env->body)) {
          FEDLORA_CHECK_MSG(false, StrCat("coordinator error: ", error->message));
        }
      }
    }
    // Start uploads once every session holds its task, at most `window` at a time.
    if (ready.size() + acked + in_flight == sessions.size()) {
      while (!ready.empty() && in_flight < static_cast<std::size_t>(window)) {
        Session& s = sessions[ready.front()];
        ready.pop_front();
        if (acked + in_flight == 0) first_upload = SteadyClock::now();
        upload.round = s.round;
        upload.ticket = s.ticket;
        s.upload_sequence = s.sequence + 1;
        SendBody(s, upload, setup.chunk_bytes);
        ++in_flight;
      }
    }
  }
  FEDLORA_CHECK_MSG(fgets(line, sizeof(line), from_child) != nullptr, "no RSS from coordinator");
  fclose(from_child);
  int status = 0;
  waitpid(child, &status, 0);
  FEDLORA_CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "coordinator failed");
  std::filesystem::remove_all(setup.state_dir);
  return Result1{Seconds(first_upload, last_ack), PayloadBytes(upload.tensors) * sessions.size(),
                 std::stoull(line)};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_ingest: the coordinator's ingest of N uploads against raw ZeroMQ"};
  std::string clients_list = "10,100,1000";
  Setup setup;
  int window = 4;
  double chunk_mb = 8;
  std::string scratch = std::filesystem::temp_directory_path().string() + "/fedlora-bench-ingest";
  app.add_option("--clients", clients_list, "Comma-separated N")->capture_default_str();
  app.add_option("--layers", setup.layers)->capture_default_str();
  app.add_option("--dim", setup.dim)->capture_default_str();
  app.add_option("--rank", setup.rank)->capture_default_str();
  app.add_option("--chunk-mb", chunk_mb)->capture_default_str();
  app.add_option("--window", window, "Uploads in flight at once")->capture_default_str();
  app.add_option("--scratch", scratch, "State directory of the coordinator")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  setup.chunk_bytes = static_cast<std::uint64_t>(chunk_mb * (1 << 20));
  setup.state_dir = scratch;
  const double upload_mb = 2.0 * setup.rank * setup.dim * 4 * 2 * setup.layers / 1e6;
  std::stringstream list(clients_list);
  for (std::string item; std::getline(list, item, ',');) {
    setup.clients = std::stoi(item);
    const Result1 r = CoordinatorIngest(setup, window);
    const double raw = RawPushPull(r.upload_bytes, setup.chunk_bytes);
    const double gbps = 8.0 * static_cast<double>(r.upload_bytes) / r.seconds / 1e9;
    const double raw_gbps = 8.0 * static_cast<double>(r.upload_bytes) / raw / 1e9;
    std::printf(
        "n=%d upload_mb=%.1f uploads_per_s=%.1f gbps=%.2f raw_gbps=%.2f ratio=%.2f "
        "coordinator_peak_rss_mb=%.0f global_mb=%.1f accumulator_mb=%.1f\n",
        setup.clients, upload_mb, setup.clients / r.seconds, gbps, raw_gbps, gbps / raw_gbps,
        static_cast<double>(r.peak_rss_kb) / 1024.0, upload_mb, upload_mb * 4);
    std::fflush(stdout);
  }
  return 0;
}
