// bench/secagg_protocol — the SecAgg+ protocol's cost per stage against plain aggregation of the
// same inputs, measured in the same run (issue 13).
//
// For N clients and an adapter of P parameters, runs the real protocol objects
// (secagg::ClientProtocol, server::SecAggAttempt) message by message, in one process and without
// sockets, and prints per stage the mean client time, the coordinator's time, and the bytes each
// client sends and receives (encoded messages); then the baseline, the coordinator folding the
// same N uploads as f32 into exact weighted sums (the plain path, server/strategies/
// weighted_sums.h), and the ratio of the secure coordinator's total time to it.
//   bench_secagg_protocol [--clients 10,100,1000] [--params 46000] [--drop 0.05]
// With --drop, that share of clients sends no masked input (dropped after sharing keys): the
// coordinator then rebuilds their keys and removes their pairwise masks.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "common/secagg/client_protocol.h"
#include "common/secagg/secure_input.h"
#include "common/wire/codec.h"
#include "server/secagg_attempt.h"
#include "server/strategies/weighted_sums.h"

namespace {

using namespace fedlora;
using Steady = std::chrono::steady_clock;

double Since(Steady::time_point t0) {
  return std::chrono::duration<double>(Steady::now() - t0).count();
}

std::size_t Bytes(wire::Body body) {
  return wire::Encode(wire::Envelope{wire::kProtocolVersion, 1, 1, std::move(body)}).total_bytes();
}

struct Stage {
  double client_s = 0, coordinator_s = 0;
  std::size_t up = 0, down = 0;
};

int Run(std::uint32_t n, std::int64_t params, double drop) {
  wire::SecAggParams p;
  p.clip = 1.0;
  p.levels_bits = 20;
  p.modulus_bits = 32;
  p.weighting = wire::SecAggWeighting::kExamples;
  p.weight_scale = 1000;
  p.layout = {{"m.lora_A.weight", {params}}};
  const secagg::Modulus modulus = secagg::Modulus::Bits(32).value();
  std::mt19937_64 rng(n);
  std::uniform_real_distribution<double> u(-0.1, 0.1);
  std::vector<float> values(static_cast<std::size_t>(params));
  for (float& v : values) v = static_cast<float>(u(rng));
  const Tensor x = MakeF32({params}, values);

  std::set<std::string, std::less<>> ids;
  for (std::uint32_t i = 0; i < n; ++i) ids.insert("client-" + std::to_string(100000 + i));
  std::map<std::string, secagg::ClientProtocol> clients;
  std::set<std::string> dropped;
  std::uint32_t k = 0;
  for (const std::string& id : ids) {
    clients.emplace(id, secagg::ClientProtocol(1, 1, modulus));
    if (k++ < static_cast<std::uint32_t>(drop * n)) dropped.insert(id);
  }
  Clock::TimePoint now{};
  server::SecAggAttempt attempt(1, 1, p, {}, ids, 2, now, now + std::chrono::hours(1));
  Stage st[4];
  // 1: keys.
  for (auto& [id, c] : clients) {
    const wire::SecAggKeys keys = c.Keys();
    st[0].up += Bytes(wire::SecAgg{1, {}, keys});
    const auto t0 = Steady::now();
    (void)attempt.OnKeys(id, keys);
    st[0].coordinator_s += Since(t0);
  }
  auto t0 = Steady::now();
  std::vector<server::SecAggAttempt::Outgoing> out = attempt.Step(now);
  st[0].coordinator_s += Since(t0);
  // 2: shares.
  std::map<std::string, wire::SecAggShares> sealed;
  for (auto& o : out) {
    st[0].down += Bytes(wire::SecAgg{1, {}, o.stage});
    t0 = Steady::now();
    sealed[o.to] = clients.at(o.to).OnRoster(std::get<wire::SecAggRoster>(o.stage)).value();
    st[1].client_s += Since(t0);
  }
  for (auto& [id, s] : sealed) {
    st[1].up += Bytes(wire::SecAgg{1, {}, s});
    t0 = Steady::now();
    (void)attempt.OnShares(id, s);
    st[1].coordinator_s += Since(t0);
  }
  t0 = Steady::now();
  out = attempt.Step(now);
  st[1].coordinator_s += Since(t0);
  // 3: input (quantise, mask, sum).
  for (auto& o : out) {
    st[1].down += Bytes(wire::SecAgg{1, {}, o.stage});
    secagg::ClientProtocol& c = clients.at(o.to);
    t0 = Steady::now();
    (void)c.OnShares(std::get<wire::SecAggShares>(o.stage));
    st[1].client_s += Since(t0);
    if (dropped.contains(o.to)) continue;
    wire::Update update;
    update.num_examples = 500;
    update.num_samples = 8;
    update.tensors.emplace("m.lora_A.weight", x);
    t0 = Steady::now();
    secagg::SecureInput in = secagg::MakeSecureInput(p, {}, {}, update, 1).value();
    std::vector<std::uint32_t> masked = c.Mask(std::move(in.words)).value();
    st[2].client_s += Since(t0);
    st[2].up += 4 * masked.size() + 512;  // The u32 frame plus an Update envelope.
    t0 = Steady::now();
    (void)attempt.OnMaskedInput(o.to, masked, 0);
    st[2].coordinator_s += Since(t0);
  }
  t0 = Steady::now();
  if (!dropped.empty()) now = attempt.deadline();  // The dropped never send: the stage times out.
  out = attempt.Step(now);
  st[2].coordinator_s += Since(t0);
  // 4: unmask.
  for (auto& o : out) {
    st[3].down += Bytes(wire::SecAgg{1, {}, o.stage});
    t0 = Steady::now();
    wire::SecAggReveal reveal =
        clients.at(o.to).OnUnmask(std::get<wire::SecAggUnmask>(o.stage)).value();
    st[3].client_s += Since(t0);
    st[3].up += Bytes(wire::SecAgg{1, {}, reveal});
    t0 = Steady::now();
    (void)attempt.OnReveal(o.to, reveal);
    st[3].coordinator_s += Since(t0);
  }
  t0 = Steady::now();
  attempt.Step(now);
  st[3].coordinator_s += Since(t0);
  if (attempt.stage() != server::SecAggStage::kDone) {
    std::fprintf(stderr, "secure aggregation failed: %s\n", attempt.failure().c_str());
    return 1;
  }
  // Baseline: the plain coordinator folding the same uploads (f32) into exact weighted sums.
  const std::uint32_t survivors = n - static_cast<std::uint32_t>(dropped.size());
  server::WeightedSums sums;
  t0 = Steady::now();
  for (std::uint32_t i = 0; i < survivors; ++i) {
    const server::WeightedSums::Term term{"m.lora_A.weight", &x, 500};
    (void)sums.Fold(std::span(&term, 1), "c");
  }
  (void)sums.Means(DType::kF32);
  const double plain_s = Since(t0);
  double secure_s = 0;
  const char* names[4] = {"keys", "shares", "input", "unmask"};
  for (int s = 0; s < 4; ++s) {
    secure_s += st[s].coordinator_s;
    const double clients_seen = s == 2 ? survivors : n;
    std::printf(
        "clients=%u params=%lld dropped=%zu stage=%s client_ms=%.3f coordinator_ms=%.3f "
        "up_bytes_per_client=%.0f down_bytes_per_client=%.0f\n",
        n, static_cast<long long>(params), dropped.size(), names[s],
        1e3 * st[s].client_s / clients_seen, 1e3 * st[s].coordinator_s,
        static_cast<double>(st[s].up) / clients_seen, static_cast<double>(st[s].down) / n);
  }
  std::printf(
      "clients=%u params=%lld dropped=%zu coordinator_secure_ms=%.1f "
      "coordinator_plain_ms=%.1f ratio=%.2f plain_upload_bytes=%lld\n",
      n, static_cast<long long>(params), dropped.size(), 1e3 * secure_s, 1e3 * plain_s,
      secure_s / plain_s, static_cast<long long>(4 * params));
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SecAgg+ per stage against plain aggregation (bench/secagg_protocol.cc)"};
  std::string clients = "10,100,1000";
  std::int64_t params = 46000;
  double drop = 0.05;
  app.add_option("--clients", clients, "Comma-separated N");
  app.add_option("--params", params, "Adapter parameters");
  app.add_option("--drop", drop, "Share of clients dropped after sharing keys");
  CLI11_PARSE(app, argc, argv);
  std::stringstream list(clients);
  for (std::string item; std::getline(list, item, ',');) {
    if (Run(static_cast<std::uint32_t>(std::stoul(item)), params, drop) != 0) return 1;
  }
  return 0;
}
