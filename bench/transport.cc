// bench/transport — what CURVE costs on loopback, against plaintext measured in the same run.
//
// Two paths, for messages of 64 KB, 1 MB, 16 MB and 128 MB (--sizes to change):
//   raw     a DEALER streams messages to a ROUTER (each side its own ZeroMQ context and I/O
//           thread, as two processes would), plaintext vs CURVE with a ZAP handler admitting the
//           client's key; throughput of the whole stream.
//   upload  a real Coordinator (FedAvg, one module sized so an Update is that large) and a peer
//           uploading one Update per round: encode, send, receive, SHA-256 of every tensor frame,
//           validation, persisting (fsync) and the Ack, timed from send to Ack (over CURVE both
//           sides skip the per-frame SHA-256, as fedlora does: the MAC covers it); the round's
//           aggregation and checkpoint happen between uploads, outside the timing.
// --paths raw measures only the first path (scripts/bench-transport-link.sh runs it over a
// rate-limited link). Prints one line per path and size, best of --repeats:
//   path=raw size=1MB plain_gbps=<x> curve_gbps=<y> ratio=<y/x>
// (gbps: gigabits per second of message payload.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
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
using KeyPair = std::shared_ptr<const crypto::CurveKeyPair>;

double Seconds(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string SizeName(std::size_t bytes) {
  return bytes >= (1u << 20) ? std::to_string(bytes >> 20) + "MB" : std::to_string(bytes >> 10) + "KB";
}

KeyPair NewKeys() {
  return std::make_shared<const crypto::CurveKeyPair>(crypto::GenerateCurveKeyPair());
}

net::Message Receive(net::Socket& s) {
  while (true) {
    Result<std::optional<net::Message>> m = s.Receive(std::chrono::milliseconds(60000));
    FEDLORA_CHECK_MSG(m.ok() && m->has_value(), "no message within 60 s");
    return std::move(**m);
  }
}

// ---- raw ZeroMQ ------------------------------------------------------------------------------

// Seconds to stream `count` messages of `bytes` from a DEALER to a ROUTER and hear back.
double RawStream(bool curve, std::size_t bytes, int count) {
  net::Context server_context, client_context;
  const KeyPair server_keys = NewKeys(), client_keys = NewKeys();
  net::SocketOptions server_options, client_options;
  std::optional<net::ZapRegistration> zap;
  if (curve) {
    zap = std::move(server_context
                        .ServeZap("bench", [](const net::ZapRequest&) {
                          return net::ZapVerdict{true, "client", ""};
                        })
                        .value());
    server_options.curve = net::CurveOptions{server_keys, std::nullopt, "bench"};
    client_options.curve = net::CurveOptions{client_keys, server_keys->public_key, ""};
  }
  net::Socket router =
      net::Socket::Open(server_context, net::SocketKind::kRouter, server_options).value();
  FEDLORA_CHECK(router.Bind("tcp://127.0.0.1:*").ok());
  net::Socket dealer =
      net::Socket::Open(client_context, net::SocketKind::kDealer, client_options).value();
  FEDLORA_CHECK(dealer.Connect(router.LastEndpoint().value()).ok());
  // Warm up: one round trip establishes the connection (and the CURVE handshake).
  const std::vector<std::byte> hello(8);
  const std::vector<std::span<const std::byte>> ping = {hello};
  FEDLORA_CHECK(dealer.Send(ping).ok());
  net::Message first = Receive(router);
  FEDLORA_CHECK(router.Send(ping, first.frame(0)).ok());
  Receive(dealer);

  const std::vector<std::byte> payload(bytes, std::byte{0x5a});
  const std::vector<std::span<const std::byte>> frames = {payload};
  std::thread receiver([&] {
    std::size_t got = 0;
    std::vector<std::byte> route;
    for (int i = 0; i < count; ++i) {
      net::Message m = Receive(router);
      got += m.frame(1).size();
      if (i + 1 == count) route.assign(m.frame(0).begin(), m.frame(0).end());
    }
    FEDLORA_CHECK(got == bytes * static_cast<std::size_t>(count));
    FEDLORA_CHECK(router.Send(ping, route).ok());
  });
  const auto start = SteadyClock::now();
  for (int i = 0; i < count; ++i) {
    while (!dealer.Send(frames).ok()) std::this_thread::yield();  // Queue full: wait for room.
  }
  Receive(dealer);
  const double seconds = Seconds(start, SteadyClock::now());
  receiver.join();
  return seconds;
}

// ---- the coordinator's upload path -----------------------------------------------------------

// Seconds per upload (send to Ack, best of `rounds`) of an Update of about `bytes`.
double UploadPath(bool curve, std::size_t bytes, int rounds, const std::string& scratch) {
  constexpr std::uint32_t kRank = 8;
  // One module, A (r x d) and B (d x r) in f32: 2 * r * d * 4 bytes.
  const auto d = static_cast<std::int64_t>(std::max<std::size_t>(bytes / (2 * kRank * 4), 1));
  const std::string digest(64, 'b');
  const std::vector<wire::ModuleInfo> modules = {{"model.layers.0.self_attn.q_proj", d, d}};
  const std::string dir = scratch + (curve ? "/curve" : "/plain");
  std::filesystem::remove_all(dir);

  server::CoordinatorConfig config;
  config.state_dir = dir + "/state";
  config.rounds = static_cast<std::uint32_t>(rounds);
  config.base_model_sha256 = digest;
  config.keep_checkpoints = 1;
  config.transport.bind = "tcp://127.0.0.1:*";
  config.transport.max_message_bytes = 2 * bytes + (64u << 20);
  config.round.min_clients = 1;
  config.eval.enabled = false;
  config.export_config.peft_every_round = false;
  config.lora = {.rank = kRank, .alpha = 16, .targets = {"q_proj"}};
  const KeyPair client_keys = NewKeys();
  if (curve) {
    const crypto::CurveKeyPair server = crypto::WriteNewKeyFiles(dir + "/keys", "coordinator").value();
    (void)server;
    config.security.mode = "curve";
    config.security.secret_key_file = dir + "/keys/coordinator.key_secret";
    config.security.authorized_clients = dir + "/authorized_clients";
    std::FILE* f = std::fopen(config.security.authorized_clients.c_str(), "w");
    std::fprintf(f, "bench %s\n", client_keys->public_key.Z85().c_str());
    std::fclose(f);
  } else {
    config.security.mode = "none";
  }
  net::Context server_context, client_context;
  SystemClock clock;
  server::Coordinator coordinator(
      config,
      std::make_unique<server::FedAvg>(server::FedAvgConfig{.lora = config.lora, .seed = 1}),
      server_context, clock);
  FEDLORA_CHECK(coordinator.Start().ok());
  Status run_result;
  std::thread loop([&] { run_result = coordinator.Run(); });

  net::SocketOptions options;
  options.max_frame_bytes = static_cast<std::int64_t>(config.transport.max_message_bytes);
  if (curve) options.curve = net::CurveOptions{client_keys, coordinator.public_key(), ""};
  net::Socket peer = net::Socket::Open(client_context, net::SocketKind::kDealer, options).value();
  FEDLORA_CHECK(peer.Connect(coordinator.endpoint()).ok());
  wire::DecodeLimits limits;
  limits.max_message_bytes = config.transport.max_message_bytes;
  limits.require_digests = !curve;  // As fedlora-client does over CURVE.
  std::uint64_t session = 0, sequence = 0;
  const auto send = [&](wire::Body body) {
    // The encoded message borrows the envelope's tensor bytes: keep it alive until sent.
    const wire::Envelope envelope{wire::kProtocolVersion, session, ++sequence, std::move(body)};
    const wire::EncodedMessage m = wire::Encode(envelope, {.tensor_digests = !curve});
    FEDLORA_CHECK(peer.Send(m.frames()).ok());
  };
  const auto next = [&]() {
    while (true) {
      net::Message m = Receive(peer);
      wire::Envelope e = wire::Decode(m.frames(), limits).value();
      if (!std::holds_alternative<wire::Heartbeat>(e.body)) return e;
    }
  };
  wire::Hello hello;
  hello.client_name = "bench";
  hello.base_model_sha256 = digest;
  hello.capabilities = {"cpu", 1ull << 30, 0, 100, 1.0};
  hello.modules = modules;
  send(hello);
  session = next().session_id;

  double best = 1e9;
  for (int r = 0; r < rounds; ++r) {
    wire::Envelope task_envelope = next();
    while (!std::holds_alternative<wire::RoundTask>(task_envelope.body)) task_envelope = next();
    const wire::RoundTask& task = std::get<wire::RoundTask>(task_envelope.body);
    wire::Update update;
    update.round = task.round;
    update.ticket = task.ticket;
    update.num_samples = update.num_examples = 1;
    update.metrics = {{"train_loss", 1.0}};
    for (const auto& [name, t] : task.tensors) update.tensors[name] = t;  // Same shapes.
    const auto start = SteadyClock::now();
    send(std::move(update));
    wire::Envelope ack = next();
    FEDLORA_CHECK_MSG(std::holds_alternative<wire::Ack>(ack.body), "expected an Ack");
    best = std::min(best, Seconds(start, SteadyClock::now()));
  }
  loop.join();
  FEDLORA_CHECK_MSG(run_result.ok(), run_result.ToString());
  std::filesystem::remove_all(dir);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes = {64u << 10, 1u << 20, 16u << 20, 128u << 20};
  int repeats = 3;
  bool raw_only = false;
  std::string scratch = std::filesystem::temp_directory_path().string() + "/fedlora_bench_transport";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    if (flag == "--scratch") scratch = argv[i + 1];
    if (flag == "--paths") raw_only = std::string(argv[i + 1]) == "raw";
    if (flag == "--sizes") {  // Comma-separated KiB.
      sizes.clear();
      for (char* p = argv[i + 1]; *p != '\0';) {
        sizes.push_back(std::strtoul(p, &p, 10) << 10);
        if (*p == ',') ++p;
      }
    }
  }
  SetLogLevel(LogLevel::kWarn);
  std::printf("# loopback, best of %d; gbps = gigabits of payload per second\n", repeats);
  for (const std::size_t size : sizes) {
    // About 1 GB per stream (at least 4 messages), so small messages are measured in bulk.
    const int count = static_cast<int>(std::clamp<std::size_t>((1u << 30) / size, 4, 20000));
    double plain = 1e9, curve = 1e9;
    for (int r = 0; r < repeats; ++r) {  // Alternating, so drift hits both alike.
      plain = std::min(plain, RawStream(false, size, count));
      curve = std::min(curve, RawStream(true, size, count));
    }
    const double bits = 8.0 * static_cast<double>(size) * count;
    std::printf("path=raw size=%s plain_gbps=%.2f curve_gbps=%.2f ratio=%.2f\n",
                SizeName(size).c_str(), bits / plain / 1e9, bits / curve / 1e9, plain / curve);
    std::fflush(stdout);
  }
  for (const std::size_t size : raw_only ? std::vector<std::size_t>{} : sizes) {
    const int rounds = size >= (64u << 20) ? repeats : 3 * repeats;
    const double plain = UploadPath(false, size, rounds, scratch);
    const double curve = UploadPath(true, size, rounds, scratch);
    const double bits = 8.0 * static_cast<double>(size);
    std::printf("path=upload size=%s plain_gbps=%.2f curve_gbps=%.2f ratio=%.2f\n",
                SizeName(size).c_str(), bits / plain / 1e9, bits / curve / 1e9, plain / curve);
    std::fflush(stdout);
  }
  std::filesystem::remove_all(scratch);
  return 0;
}
