// checkpoint_store.h — everything the coordinator keeps on disk, written crash-safely.
//
// Layout of a state directory:
//   LOCK                               flock()ed while a coordinator uses the directory
//   checkpoints/<round:06d>/           one committed round (0 = the initial adapter)
//       global.safetensors             global adapter factors
//       extra.safetensors              strategy tensors (only when non-empty)
//       corrections.safetensors        base-weight correction log (only when non-empty)
//       state.json                     round, strategy, model layout, LoRA spec, strategy state,
//                                      the privacy ledger (rounds released under DP)
//       metrics.json                   the round's metrics.jsonl record
//       manifest.json                  SHA-256 of every file above; verified on load
//   pending/<round:06d>/<client>.safetensors   accepted uploads of the open round
//   incoming/<client>.<transfer>.part  chunked uploads still arriving (removed when they complete,
//                                      fail or their client leaves; cleared at every start)
//   metrics.jsonl                      one JSON object per committed round
//   privacy_ledger.json                the DP ledger, rounds released but not yet committed
//                                      included (a candidate reaches evaluators before its commit)
//
// A checkpoint is staged in checkpoints/.staging-<round>, fsynced and renamed into place, so a
// crash leaves either the old or the new round. Uploads are persisted (atomically) before their
// Ack, so a coordinator killed with SIGKILL restarts into the same round without losing one.
//
// Thread-compatible: owned by the coordinator's loop thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/wire/messages.h"
#include "server/strategies/strategy.h"

namespace fedlora::server {

// An accepted upload of the open round, with what is needed to re-derive its task.
struct PendingUpload {
  ClientUpdate update;
  wire::Capabilities capabilities;
  wire::AdapterPlan plan;
};

// One checkpoint directory as VerifyAll found it.
struct CheckpointCheck {
  std::uint64_t round = 0;
  std::string dir;
  Status status;  // OK: every file matches the manifest and the checkpoint parses.
};

struct Checkpoint {
  std::uint64_t round = 0;
  std::string strategy;
  ModelLayout layout;
  wire::LoraSpec lora;
  GlobalState state;
  std::string metrics_json;  // One line, without newline; empty if the round has no record.
  // The differential-privacy ledger (privacy_ledger.h) as of this round; empty without privacy.
  std::string privacy_json;
};

class CheckpointStore {
 public:
  // Creates the directory tree if needed, takes the lock (kFailedPrecondition if another process
  // holds it) and removes leftovers of interrupted commits and partial chunked uploads.
  static Result<CheckpointStore> Open(const std::string& state_dir);

  CheckpointStore(CheckpointStore&&) noexcept;
  CheckpointStore& operator=(CheckpointStore&&) noexcept;
  ~CheckpointStore();

  // The newest checkpoint whose manifest verifies, or nullopt when there is none. A newer
  // checkpoint that is provably damaged (digest mismatch, unparsable) is moved aside to
  // checkpoints/.corrupt-<round> with a warning; any other error (permissions, I/O) is returned.
  Result<std::optional<Checkpoint>> LoadLatest() const;

  // Checks every committed checkpoint of `state_dir` against its manifest (SHA-256 of every
  // file) and parses it, oldest first; for the operator (`fedlora-coordinator verify`). Read-only
  // and lock-free, so it may run next to a live coordinator; a damaged checkpoint is reported,
  // never moved. Directories set aside as damaged (.corrupt-<round>) are reported as damaged.
  // An error only when the checkpoints directory cannot be listed.
  static Result<std::vector<CheckpointCheck>> VerifyAll(const std::string& state_dir);

  // Removes pending uploads of rounds <= `round` (left behind by a crash after their commit).
  Status DropPendingThrough(std::uint64_t round);

  // Atomically writes `checkpoint`, then drops its pending uploads and, if `keep` > 0, all but
  // the newest `keep` checkpoints. kAlreadyExists if that round is already committed.
  Status Commit(const Checkpoint& checkpoint, std::uint32_t keep = 0);

  // Persists an accepted upload for `round` (atomic; replaces an earlier one from that client).
  Status PersistUpdate(std::uint64_t round, const PendingUpload& upload);
  // Removes `client_id`'s persisted upload for `round` (its key was revoked), durably: a restart
  // must not restore it. OK when there is none.
  Status DropPendingUpload(std::uint64_t round, const std::string& client_id);
  // The file `client_id`'s upload for `round` is persisted in (it may not exist).
  std::string PendingPath(std::uint64_t round, const std::string& client_id) const;
  // Clients with an upload persisted for `round`, sorted.
  Result<std::vector<std::string>> PendingClients(std::uint64_t round) const;
  // `client_id`'s persisted upload for `round`. kDataLoss naming the file when it is unreadable
  // or its metadata is damaged or belongs to another round or client.
  Result<PendingUpload> LoadPendingUpload(std::uint64_t round, const std::string& client_id) const;
  // Uploads persisted for `round`, sorted by client id. Unreadable files are skipped with a
  // warning (their clients simply are asked again). Holds them all: for tools and tests; the
  // coordinator reads them one at a time.
  Result<std::vector<PendingUpload>> LoadPending(std::uint64_t round) const;

  // Where the chunks of `client_id`'s chunked upload `transfer` are spooled while they arrive.
  std::string IncomingPath(const std::string& client_id, std::uint64_t transfer) const;

  // Appends `json_line` for `round` to metrics.jsonl unless a record for that round is there.
  Status AppendMetrics(std::uint64_t round, const std::string& json_line);
  // Rounds recorded in metrics.jsonl, in file order.
  Result<std::vector<std::uint64_t>> MetricsRounds() const;

  // The differential-privacy ledger, written (atomically, synced) whenever a round is released,
  // and what was last written (nullopt when never).
  Status PersistPrivacyLedger(const std::string& json);
  Result<std::optional<std::string>> LoadPrivacyLedger() const;

  const std::string& dir() const { return dir_; }
  std::string CheckpointDir(std::uint64_t round) const;
  std::string MetricsPath() const;

 private:
  CheckpointStore() = default;
  std::string dir_;
  int lock_fd_ = -1;
};

}  // namespace fedlora::server
