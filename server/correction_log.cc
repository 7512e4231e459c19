#include "server/correction_log.h"

#include <algorithm>
#include <charconv>

namespace fedlora::server {
namespace {

std::string TensorName(bool snapshot, std::uint64_t version, const std::string& module,
                       char part) {
  return StrCat("base.", snapshot ? "snapshot." : "", version, ".", module, ".", part);
}

// Adds the tensors of `entry` to `tensors` and a CorrectionRef per module to `update`.
void Emit(const CorrectionEntry& entry, bool snapshot, wire::BaseUpdate* update,
          TensorMap* tensors) {
  for (const auto& [module, c] : entry.modules) {
    wire::CorrectionRef ref;
    ref.version = entry.version;
    ref.module = module;
    if (c.is_dense()) {
      ref.dense = TensorName(snapshot, entry.version, module, 'D');
      (*tensors)[ref.dense] = c.dense;
    } else {
      ref.u = TensorName(snapshot, entry.version, module, 'U');
      ref.v = TensorName(snapshot, entry.version, module, 'V');
      (*tensors)[ref.u] = c.u;
      (*tensors)[ref.v] = c.v;
    }
    update->entries.push_back(std::move(ref));
  }
}

}  // namespace

std::size_t CorrectionEntry::bytes() const {
  std::size_t total = 0;
  for (const auto& [module, c] : modules) total += c.bytes();
  return total;
}

std::uint64_t CorrectionLog::latest_version() const {
  if (!entries_.empty()) return entries_.back().version;
  return snapshot_ ? snapshot_->version : 0;
}

std::size_t CorrectionLog::ReplayBytes() const {
  std::size_t total = 0;
  for (const CorrectionEntry& e : entries_) total += e.bytes();
  return total;
}

void CorrectionLog::Append(CorrectionEntry entry) {
  FEDLORA_CHECK_MSG(entry.version > latest_version(), "correction version ", entry.version,
                    " does not follow ", latest_version());
  entries_.push_back(std::move(entry));
}

void CorrectionLog::ReplaceWithSnapshot(CorrectionEntry snapshot) {
  FEDLORA_CHECK_MSG(snapshot.version == latest_version(), "snapshot of version ",
                    snapshot.version, " must cover the latest version ", latest_version());
  snapshot_ = std::move(snapshot);
  entries_.clear();
}

wire::BaseUpdate CorrectionLog::UpdateFor(std::uint64_t client_version, TensorMap* tensors) const {
  wire::BaseUpdate update;
  const std::uint64_t latest = latest_version();
  update.to_version = latest;
  bool known = client_version == 0 || (snapshot_ && client_version == snapshot_->version);
  for (const CorrectionEntry& e : entries_) known = known || e.version == client_version;
  if (known && client_version == latest) {
    update.from_version = latest;
    return update;  // Nothing to do.
  }
  const bool rebase =
      !known || client_version == 0 || (snapshot_ && client_version < snapshot_->version);
  if (rebase) {
    update.rebase = true;
    update.from_version = 0;
    if (snapshot_) Emit(*snapshot_, true, &update, tensors);
    for (const CorrectionEntry& e : entries_) Emit(e, false, &update, tensors);
    return update;
  }
  update.from_version = client_version;
  for (const CorrectionEntry& e : entries_) {
    if (e.version > client_version) Emit(e, false, &update, tensors);
  }
  return update;
}

TensorMap CorrectionLog::ToTensors() const {
  wire::BaseUpdate unused;
  TensorMap out;
  if (snapshot_) Emit(*snapshot_, true, &unused, &out);
  for (const CorrectionEntry& e : entries_) Emit(e, false, &unused, &out);
  return out;
}

Result<CorrectionLog> CorrectionLog::FromTensors(const TensorMap& tensors) {
  // Group "base.[snapshot.]<version>.<module>.<part>" back into entries.
  std::map<std::uint64_t, CorrectionEntry> entries;
  std::optional<CorrectionEntry> snapshot;
  for (const auto& [name, t] : tensors) {
    std::string_view rest(name);
    const auto bad = [&] { return DataLoss("malformed correction tensor name '", name, "'"); };
    if (!rest.starts_with("base.")) return bad();
    rest.remove_prefix(5);
    const bool is_snapshot = rest.starts_with("snapshot.");
    if (is_snapshot) rest.remove_prefix(9);
    const std::size_t dot = rest.find('.');
    std::uint64_t version = 0;
    if (dot == std::string_view::npos ||
        std::from_chars(rest.data(), rest.data() + dot, version).ec != std::errc()) {
      return bad();
    }
    rest.remove_prefix(dot + 1);
    if (rest.size() < 3 || rest[rest.size() - 2] != '.') return bad();
    const char part = rest.back();
    const std::string module(rest.substr(0, rest.size() - 2));
    CorrectionEntry* entry;
    if (is_snapshot) {
      if (snapshot && snapshot->version != version) return bad();
      if (!snapshot) snapshot = CorrectionEntry{version, {}};
      entry = &*snapshot;
    } else {
      entry = &entries[version];
      entry->version = version;
    }
    ModuleCorrection& c = entry->modules[module];
    switch (part) {
      case 'U': c.u = t; break;
      case 'V': c.v = t; break;
      case 'D': c.dense = t; break;
      default: return bad();
    }
  }
  CorrectionLog log;
  log.snapshot_ = std::move(snapshot);
  for (auto& [version, entry] : entries) {
    if (log.snapshot_ && version <= log.snapshot_->version) {
      return DataLoss("correction entry of version ", version, " predates the snapshot");
    }
    for (const auto& [module, c] : entry.modules) {
      if (c.is_dense() ? !c.u.shape.empty() || !c.v.shape.empty()
                       : c.u.shape.size() != 2 || c.v.shape.size() != 2) {
        return DataLoss("correction ", version, " of '", module, "' lacks U/V or D");
      }
    }
    log.entries_.push_back(std::move(entry));
  }
  return log;
}

}  // namespace fedlora::server
