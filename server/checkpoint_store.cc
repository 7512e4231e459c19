#include "server/checkpoint_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/crypto/sha256.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/safetensors.h"

namespace fedlora::server {
namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

constexpr int kFormatVersion = 1;

std::string RoundName(std::uint64_t round) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%06llu", static_cast<unsigned long long>(round));
  return buf;
}

std::optional<std::uint64_t> ParseRoundName(const std::string& name) {
  std::uint64_t round = 0;
  const auto [ptr, ec] = std::from_chars(name.data(), name.data() + name.size(), round);
  if (name.empty() || ec != std::errc() || ptr != name.data() + name.size()) return std::nullopt;
  return round;
}

// Round numbers of the committed checkpoint directories, newest first.
Result<std::vector<std::uint64_t>> CommittedRounds(const std::string& dir) {
  std::vector<std::uint64_t> rounds;
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(dir + "/checkpoints", ec)) {
    if (const auto r = ParseRoundName(entry.path().filename().string())) rounds.push_back(*r);
  }
  if (ec) return DataLoss("listing ", dir, "/checkpoints: ", ec.message());
  std::sort(rounds.rbegin(), rounds.rend());
  return rounds;
}

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

json LoraToJson(const wire::LoraSpec& l) {
  return {{"rank", l.rank}, {"alpha", l.alpha}, {"dropout", l.dropout}, {"rslora", l.rslora},
          {"targets", l.targets}};
}

json PlanToJson(const wire::AdapterPlan& p) {
  json modules = json::array();
  for (const auto& m : p.modules) {
    modules.push_back({{"module", m.module}, {"rank", m.rank}, {"sketch", m.sketch}});
  }
  return {{"mode", static_cast<int>(p.mode)},
          {"init", static_cast<int>(p.init)},
          {"train_a", p.train_a},
          {"train_b", p.train_b},
          {"upload_a", p.upload_a},
          {"upload_b", p.upload_b},
          {"global_rank", p.global_rank},
          {"modules", std::move(modules)},
          {"pruning", {{"gamma", p.pruning.gamma}, {"lambda", p.pruning.lambda},
                       {"min_rank", p.pruning.min_rank}}},
          {"init_samples", p.init_samples},
          {"init_learning_rate", p.init_learning_rate}};
}

wire::AdapterPlan PlanFromJson(const json& j) {
  wire::AdapterPlan p;
  p.mode = static_cast<wire::AdapterMode>(j.at("mode").get<int>());
  p.init = static_cast<wire::AdapterInit>(j.at("init").get<int>());
  p.train_a = j.at("train_a").get<bool>();
  p.train_b = j.at("train_b").get<bool>();
  p.upload_a = j.at("upload_a").get<bool>();
  p.upload_b = j.at("upload_b").get<bool>();
  p.global_rank = j.at("global_rank").get<std::uint32_t>();
  for (const json& m : j.at("modules")) {
    p.modules.push_back({m.at("module").get<std::string>(), m.at("rank").get<std::uint32_t>(),
                         m.at("sketch").get<std::vector<std::uint32_t>>()});
  }
  const json& pr = j.at("pruning");
  p.pruning = {pr.at("gamma").get<double>(), pr.at("lambda").get<double>(),
               pr.at("min_rank").get<std::uint32_t>()};
  p.init_samples = j.at("init_samples").get<std::uint32_t>();
  p.init_learning_rate = j.at("init_learning_rate").get<double>();
  return p;
}

json CapabilitiesToJson(const wire::Capabilities& c) {
  return {{"device", c.device},           {"memory_bytes", c.memory_bytes},
          {"max_rank", c.max_rank},       {"num_examples", c.num_examples},
          {"relative_speed", c.relative_speed}, {"can_initialize", c.can_initialize}};
}

wire::Capabilities CapabilitiesFromJson(const json& j) {
  return {j.at("device").get<std::string>(),        j.at("memory_bytes").get<std::uint64_t>(),
          j.at("max_rank").get<std::uint32_t>(),    j.at("num_examples").get<std::uint64_t>(),
          j.at("relative_speed").get<double>(),     j.at("can_initialize").get<bool>()};
}

wire::LoraSpec LoraFromJson(const json& j) {
  wire::LoraSpec l;
  l.rank = j.at("rank").get<std::uint32_t>();
  l.alpha = j.at("alpha").get<double>();
  l.dropout = j.at("dropout").get<double>();
  l.rslora = j.at("rslora").get<bool>();
  l.targets = j.at("targets").get<std::vector<std::string>>();
  return l;
}

Result<Checkpoint> ReadCheckpoint(const std::string& dir, std::uint64_t round) try {
  FEDLORA_ASSIGN_OR_RETURN(std::string manifest_text, fs::ReadFile(dir + "/manifest.json"));
  const json manifest = json::parse(manifest_text);
  std::map<std::string, std::string> contents;
  for (const auto& [name, digest] : manifest.at("files").items()) {
    FEDLORA_ASSIGN_OR_RETURN(std::string bytes, fs::ReadFile(dir + "/" + name));
    const std::string actual = crypto::ToHex(crypto::Sha256(bytes));
    if (actual != digest.get<std::string>()) {
      return DataLoss(dir, "/", name, ": SHA-256 ", actual, " differs from the manifest's ",
                      digest.get<std::string>());
    }
    contents[name] = std::move(bytes);
  }
  for (const char* required : {"state.json", "global.safetensors"}) {
    if (!contents.contains(required)) return DataLoss(dir, ": manifest lacks ", required);
  }
  const json state = json::parse(contents["state.json"]);
  if (state.at("format_version").get<int>() != kFormatVersion) {
    return FailedPrecondition(dir, "/state.json: format_version ", state.at("format_version"),
                              " is not supported by this build (", kFormatVersion, ")");
  }
  Checkpoint cp;
  cp.round = state.at("round").get<std::uint64_t>();
  if (cp.round != round) {
    return DataLoss(dir, "/state.json: says round ", cp.round, " in the directory of round ", round);
  }
  cp.strategy = state.at("strategy").get<std::string>();
  cp.layout.base_model_sha256 = state.at("base_model_sha256").get<std::string>();
  for (const json& m : state.at("modules")) {
    cp.layout.modules.push_back(
        {m.at("name").get<std::string>(), m.at("d_out").get<std::int64_t>(),
         m.at("d_in").get<std::int64_t>()});
  }
  cp.lora = LoraFromJson(state.at("lora"));
  cp.state.round = cp.round;
  FEDLORA_ASSIGN_OR_RETURN(safetensors::File global,
                           safetensors::Parse(Bytes(contents["global.safetensors"]),
                                              dir + "/global.safetensors"));
  cp.state.adapter = std::move(global.tensors);
  if (contents.contains("extra.safetensors")) {
    FEDLORA_ASSIGN_OR_RETURN(safetensors::File extra,
                             safetensors::Parse(Bytes(contents["extra.safetensors"]),
                                                dir + "/extra.safetensors"));
    cp.state.extra = std::move(extra.tensors);
  }
  if (contents.contains("corrections.safetensors")) {
    FEDLORA_ASSIGN_OR_RETURN(safetensors::File corrections,
                             safetensors::Parse(Bytes(contents["corrections.safetensors"]),
                                                dir + "/corrections.safetensors"));
    FEDLORA_ASSIGN_OR_RETURN(cp.state.corrections,
                             CorrectionLog::FromTensors(corrections.tensors));
  }
  cp.state.strategy_json = state.value("strategy_state", std::string());
  cp.privacy_json = state.value("privacy_ledger", std::string());
  if (contents.contains("metrics.json")) cp.metrics_json = contents["metrics.json"];
  return cp;
} catch (const json::exception& e) {
  return DataLoss(dir, ": malformed checkpoint metadata: ", e.what());
}

}  // namespace

CheckpointStore::CheckpointStore(CheckpointStore&& other) noexcept
    : dir_(std::move(other.dir_)), lock_fd_(std::exchange(other.lock_fd_, -1)) {}

CheckpointStore& CheckpointStore::operator=(CheckpointStore&& other) noexcept {
  if (this != &other) {
    if (lock_fd_ >= 0) ::close(lock_fd_);
    dir_ = std::move(other.dir_);
    lock_fd_ = std::exchange(other.lock_fd_, -1);
  }
  return *this;
}

CheckpointStore::~CheckpointStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // Releases the flock.
}

Result<CheckpointStore> CheckpointStore::Open(const std::string& state_dir) {
  CheckpointStore store;
  store.dir_ = state_dir;
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(state_dir + "/checkpoints"));
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(state_dir + "/pending"));
  const std::string lock_path = state_dir + "/LOCK";
  store.lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (store.lock_fd_ < 0) {
    return FailedPrecondition("cannot open '", lock_path, "': ", std::strerror(errno));
  }
  if (::flock(store.lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return FailedPrecondition("state directory '", state_dir,
                              "' is in use by another coordinator (", lock_path, " is locked)");
  }
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(state_dir + "/checkpoints", ec)) {
    if (entry.path().filename().string().starts_with(".staging-")) {
      LogWarn("removing interrupted checkpoint ", entry.path().string());
      FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(entry.path().string()));
    }
  }
  if (ec) return DataLoss("listing ", state_dir, "/checkpoints: ", ec.message());
  // Chunked uploads that were arriving when the coordinator stopped: never acknowledged, so
  // their clients send them again; nothing of them may count.
  const std::string incoming = state_dir + "/incoming";
  std::error_code exists_ec;
  if (stdfs::exists(incoming, exists_ec)) {
    std::size_t partial = 0;
    for (const auto& entry : stdfs::directory_iterator(incoming, ec)) {
      (void)entry;
      ++partial;
    }
    if (ec) return DataLoss("listing ", incoming, ": ", ec.message());
    if (partial > 0) LogInfo("removing ", partial, " partial chunked upload(s) from ", incoming);
    FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(incoming));
  }
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(incoming));
  return store;
}

std::string CheckpointStore::IncomingPath(const std::string& client_id,
                                          std::uint64_t transfer) const {
  return StrCat(dir_, "/incoming/", client_id, ".", transfer, ".part");
}

std::string CheckpointStore::CheckpointDir(std::uint64_t round) const {
  return dir_ + "/checkpoints/" + RoundName(round);
}

std::string CheckpointStore::MetricsPath() const { return dir_ + "/metrics.jsonl"; }

Result<std::optional<Checkpoint>> CheckpointStore::LoadLatest() const {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<std::uint64_t> rounds, CommittedRounds(dir_));
  for (std::uint64_t round : rounds) {
    Result<Checkpoint> cp = ReadCheckpoint(CheckpointDir(round), round);
    if (cp.ok()) return std::optional<Checkpoint>(std::move(cp).value());
    // Only a checkpoint that is provably damaged (digest mismatch, unparsable) is set aside;
    // anything else (permissions, no file descriptors, I/O errors) stops the start-up rather
    // than silently resuming from an older round.
    if (cp.status().code() != StatusCode::kDataLoss) return cp.status();
    const std::string aside = StrCat(dir_, "/checkpoints/.corrupt-", RoundName(round));
    LogWarn("checkpoint of round ", round, " is damaged (", cp.status().message(),
            "); moved to ", aside, " and falling back to an older one");
    std::error_code ec;
    stdfs::remove_all(aside, ec);
    stdfs::rename(CheckpointDir(round), aside, ec);
    if (ec) return DataLoss("cannot set aside damaged ", CheckpointDir(round), ": ", ec.message());
  }
  return std::optional<Checkpoint>();
}

Result<std::vector<CheckpointCheck>> CheckpointStore::VerifyAll(const std::string& state_dir) {
  std::error_code exists_ec;
  if (!stdfs::is_directory(state_dir + "/checkpoints", exists_ec)) {
    return NotFound(state_dir, " has no checkpoints directory (not a coordinator state_dir?)");
  }
  FEDLORA_ASSIGN_OR_RETURN(std::vector<std::uint64_t> rounds, CommittedRounds(state_dir));
  std::vector<CheckpointCheck> out;
  for (auto it = rounds.rbegin(); it != rounds.rend(); ++it) {
    const std::string dir = StrCat(state_dir, "/checkpoints/", RoundName(*it));
    out.push_back({*it, dir, ReadCheckpoint(dir, *it).status()});
  }
  // Set aside by LoadLatest at an earlier start: damaged by definition.
  std::vector<CheckpointCheck> aside;
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(state_dir + "/checkpoints", ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(".corrupt-")) continue;
    const auto round = ParseRoundName(name.substr(std::strlen(".corrupt-")));
    aside.push_back({round.value_or(0), entry.path().string(),
                     DataLoss(entry.path().string(), ": set aside as damaged by a coordinator")});
  }
  if (ec) return DataLoss("listing ", state_dir, "/checkpoints: ", ec.message());
  std::sort(aside.begin(), aside.end(),
            [](const CheckpointCheck& a, const CheckpointCheck& b) { return a.round < b.round; });
  out.insert(out.end(), aside.begin(), aside.end());
  return out;
}

Status CheckpointStore::DropPendingThrough(std::uint64_t round) {
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(dir_ + "/pending", ec)) {
    const auto r = ParseRoundName(entry.path().filename().string());
    if (r && *r <= round) FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(entry.path().string()));
  }
  if (ec) return DataLoss("listing ", dir_, "/pending: ", ec.message());
  return OkStatus();
}

Status CheckpointStore::DropPendingUpload(std::uint64_t round, const std::string& client_id) {
  const std::string dir = dir_ + "/pending/" + RoundName(round);
  const std::string path = dir + "/" + client_id + ".safetensors";
  std::error_code ec;
  if (!stdfs::remove(path, ec) && ec) return DataLoss("removing ", path, ": ", ec.message());
  if (ec || !stdfs::exists(dir, ec)) return OkStatus();
  return fs::FsyncDirectory(dir);
}

Status CheckpointStore::Commit(const Checkpoint& cp, std::uint32_t keep) {
  const std::string final_dir = CheckpointDir(cp.round);
  std::error_code exists_ec;
  if (stdfs::exists(final_dir, exists_ec)) {
    return MakeStatus(StatusCode::kAlreadyExists, "checkpoint ", final_dir, " already exists");
  }
  const std::string staging = dir_ + "/checkpoints/.staging-" + RoundName(cp.round);
  FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(staging));
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(staging));

  std::map<std::string, std::string> files;
  json state = {{"format_version", kFormatVersion},
                {"round", cp.round},
                {"strategy", cp.strategy},
                {"base_model_sha256", cp.layout.base_model_sha256},
                {"lora", LoraToJson(cp.lora)}};
  json modules = json::array();
  for (const auto& m : cp.layout.modules) {
    modules.push_back({{"name", m.name}, {"d_out", m.d_out}, {"d_in", m.d_in}});
  }
  state["modules"] = std::move(modules);
  state["strategy_state"] = cp.state.strategy_json;
  if (!cp.privacy_json.empty()) state["privacy_ledger"] = cp.privacy_json;
  files["state.json"] = state.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const safetensors::Metadata meta = {{"format", "pt"},
                                      {"fedlora.round", std::to_string(cp.round)},
                                      {"fedlora.strategy", cp.strategy},
                                      {"fedlora.lora", LoraToJson(cp.lora).dump(-1, ' ', false, json::error_handler_t::replace)},
                                      {"fedlora.base_model_sha256", cp.layout.base_model_sha256}};
  const std::vector<std::byte> global = safetensors::Serialize(cp.state.adapter, meta);
  files["global.safetensors"].assign(reinterpret_cast<const char*>(global.data()), global.size());
  if (!cp.state.extra.empty()) {
    const std::vector<std::byte> extra = safetensors::Serialize(cp.state.extra);
    files["extra.safetensors"].assign(reinterpret_cast<const char*>(extra.data()), extra.size());
  }
  if (!cp.state.corrections.empty()) {
    const std::vector<std::byte> c = safetensors::Serialize(cp.state.corrections.ToTensors());
    files["corrections.safetensors"].assign(reinterpret_cast<const char*>(c.data()), c.size());
  }
  if (!cp.metrics_json.empty()) files["metrics.json"] = cp.metrics_json;

  json manifest = {{"round", cp.round}, {"files", json::object()}};
  for (const auto& [name, bytes] : files) {
    FEDLORA_RETURN_IF_ERROR(fs::WriteFileSynced(staging + "/" + name, bytes));
    manifest["files"][name] = crypto::ToHex(crypto::Sha256(bytes));
  }
  FEDLORA_RETURN_IF_ERROR(fs::WriteFileSynced(staging + "/manifest.json", manifest.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"));
  FEDLORA_RETURN_IF_ERROR(fs::CommitDirectory(staging, final_dir));

  // The round is durable; its pending uploads are now redundant.
  FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(dir_ + "/pending/" + RoundName(cp.round)));
  if (keep > 0) {
    FEDLORA_ASSIGN_OR_RETURN(std::vector<std::uint64_t> rounds, CommittedRounds(dir_));
    for (std::size_t i = keep; i < rounds.size(); ++i) {
      FEDLORA_RETURN_IF_ERROR(fs::RemoveAll(CheckpointDir(rounds[i])));
    }
  }
  return OkStatus();
}

Status CheckpointStore::PersistUpdate(std::uint64_t round, const PendingUpload& upload) {
  const ClientUpdate& update = upload.update;
  const std::string dir = dir_ + "/pending/" + RoundName(round);
  FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(dir));
  json metrics = json::object();
  for (const auto& [k, v] : update.metrics) metrics[k] = v;
  const safetensors::Metadata meta = {
      {"fedlora.client", update.client_id},
      {"fedlora.round", std::to_string(round)},
      {"fedlora.num_samples", std::to_string(update.num_samples)},
      {"fedlora.num_examples", std::to_string(update.num_examples)},
      {"fedlora.metrics", metrics.dump(-1, ' ', false, json::error_handler_t::replace)},
      {"fedlora.capabilities", CapabilitiesToJson(upload.capabilities).dump(-1, ' ', false, json::error_handler_t::replace)},
      {"fedlora.plan", PlanToJson(upload.plan).dump(-1, ' ', false, json::error_handler_t::replace)}};
  return safetensors::Write(dir + "/" + update.client_id + ".safetensors", update.tensors, meta);
}

Result<std::vector<std::string>> CheckpointStore::PendingClients(std::uint64_t round) const {
  std::vector<std::string> out;
  const std::string dir = dir_ + "/pending/" + RoundName(round);
  std::error_code exists_ec;
  if (!stdfs::exists(dir, exists_ec)) return out;
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".safetensors") continue;
    out.push_back(entry.path().stem().string());
  }
  if (ec) return DataLoss("listing ", dir, ": ", ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

std::string CheckpointStore::PendingPath(std::uint64_t round, const std::string& client_id) const {
  return dir_ + "/pending/" + RoundName(round) + "/" + client_id + ".safetensors";
}

Result<PendingUpload> CheckpointStore::LoadPendingUpload(std::uint64_t round,
                                                         const std::string& client_id) const {
  const std::string path = PendingPath(round, client_id);
  Result<safetensors::File> file = safetensors::Read(path);
  if (!file.ok()) return DataLoss("pending upload ", path, ": ", file.status().message());
  try {
    const safetensors::Metadata& m = file->metadata;
    PendingUpload p;
    ClientUpdate& u = p.update;
    u.client_id = m.at("fedlora.client");
    u.num_samples = std::stoull(m.at("fedlora.num_samples"));
    u.num_examples = std::stoull(m.at("fedlora.num_examples"));
    const json metrics = json::parse(m.at("fedlora.metrics"));
    for (const auto& [k, v] : metrics.items()) u.metrics[k] = v.get<double>();
    p.capabilities = CapabilitiesFromJson(json::parse(m.at("fedlora.capabilities")));
    p.plan = PlanFromJson(json::parse(m.at("fedlora.plan")));
    if (std::stoull(m.at("fedlora.round")) != round || u.client_id != client_id) {
      return DataLoss("pending upload ", path, ": recorded for another round or client");
    }
    u.tensors = std::move(file->tensors);
    return p;
  } catch (const std::exception& e) {
    return DataLoss("pending upload ", path, ": bad metadata: ", e.what());
  }
}

Result<std::vector<PendingUpload>> CheckpointStore::LoadPending(std::uint64_t round) const {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<std::string> clients, PendingClients(round));
  std::vector<PendingUpload> out;
  for (const std::string& id : clients) {
    Result<PendingUpload> p = LoadPendingUpload(round, id);
    if (!p.ok()) {
      LogWarn("ignoring unreadable pending upload: ", p.status().message());
      continue;
    }
    out.push_back(std::move(p).value());
  }
  return out;
}

Result<std::vector<std::uint64_t>> CheckpointStore::MetricsRounds() const {
  std::vector<std::uint64_t> rounds;
  std::error_code exists_ec;
  if (!stdfs::exists(MetricsPath(), exists_ec)) return rounds;
  FEDLORA_ASSIGN_OR_RETURN(std::string text, fs::ReadFile(MetricsPath()));
  std::size_t start = 0;
  std::size_t line_no = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    try {
      rounds.push_back(json::parse(line).at("round").get<std::uint64_t>());
    } catch (const json::exception& e) {
      // A torn last line (crash during append) is tolerated; AppendMetrics rewrites the record.
      LogWarn(MetricsPath(), ":", line_no, ": unreadable record ignored: ", e.what());
    }
  }
  return rounds;
}

Status CheckpointStore::PersistPrivacyLedger(const std::string& json) {
  return fs::WriteFileAtomic(dir_ + "/privacy_ledger.json", json);
}

Result<std::optional<std::string>> CheckpointStore::LoadPrivacyLedger() const {
  const std::string path = dir_ + "/privacy_ledger.json";
  std::error_code ec;
  if (!stdfs::exists(path, ec)) return std::optional<std::string>();
  FEDLORA_ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  return std::optional<std::string>(std::move(text));
}

Status CheckpointStore::AppendMetrics(std::uint64_t round, const std::string& json_line) {
  FEDLORA_ASSIGN_OR_RETURN(std::vector<std::uint64_t> rounds, MetricsRounds());
  if (std::find(rounds.begin(), rounds.end(), round) != rounds.end()) return OkStatus();
  // After a crash mid-append the file may end in a torn line; start the record on a fresh line.
  bool torn = false;
  std::error_code exists_ec;
  if (stdfs::exists(MetricsPath(), exists_ec)) {
    FEDLORA_ASSIGN_OR_RETURN(std::string text, fs::ReadFile(MetricsPath()));
    torn = !text.empty() && text.back() != '\n';
  }
  return fs::AppendLineSynced(MetricsPath(), torn ? "\n" + json_line : json_line);
}

}  // namespace fedlora::server
