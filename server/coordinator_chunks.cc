// coordinator_chunks.cc — chunked transfer on the coordinator's side (proto/fedlora.capnp,
// "Chunked transfer"; docs/protocol.md). Uploads larger than a client's transport.chunk_bytes
// arrive as a head and chunks: the head passes the round's gate and the task's tensor checks
// before anything is stored, the chunks go to a spool file under state_dir/incoming (an upload
// in flight costs disk, not memory), and the complete upload takes the same road as any other
// (HandleUpdate: checked, folded, persisted, acknowledged). Tasks larger than the coordinator's
// chunk_bytes go out the same way. Runs on the coordinator's loop thread (coordinator_impl.h).
#include <cstring>
#include <utility>
#include <vector>

#include "common/log.h"
#include "server/admission.h"
#include "server/coordinator_impl.h"

namespace fedlora::server {
namespace {

using wire::ErrorCode;

constexpr std::uint32_t kMaxTaskResends = 2;

}  // namespace

void Coordinator::Impl::HandleChunked(ClientConnection& client, wire::Envelope envelope,
                                      std::size_t bytes) {
  const std::string id = client.id;
  const std::string who = StrCat("chunked upload from ", id);
  const auto refuse = [&](std::uint64_t transfer, const Status& why) {
    void_transfers_[id] = transfer;  // Its chunks still on the way are dropped without reply.
    ProtocolError(who, client.route, transfer, wire::DecodeErrorCode(why), why.message());
  };

  if (envelope.chunked) {
    const std::uint64_t transfer = envelope.sequence;
    DropInbound(id, "the client began another upload");
    auto* update = std::get_if<wire::Update>(&envelope.body);
    if (update == nullptr) {
      refuse(transfer, Refusal(ErrorCode::kUnexpectedMessage,
                               "a client may chunk only an update, "
                               "not a ",
                               wire::BodyName(envelope.body)));
      return;
    }
    // Checked before a byte is stored: only the upload its task asked for may take disk space.
    Result<UploadGate> gate = round_.AdmitUpload(id, update->round, update->ticket);
    if (!gate.ok()) {
      refuse(transfer, gate.status());
      return;
    }
    if (*gate == UploadGate::kResend) {  // Accepted before: acknowledge again, skip the chunks.
      void_transfers_[id] = transfer;
      Send(client, wire::Ack{update->round, transfer});
      return;
    }
    const ClientTask& task = round_.run().tasks.at(id);
    if (Status s = ValidateUploadHead(*update, envelope.chunked->tensors, task,
                                      config_.strategy.max_examples_per_client);
        !s.ok()) {
      Count([](CoordinatorCounters& c) { ++c.updates_rejected; });
      refuse(transfer, s);
      round_.OnUploadRefused(id);
      return;
    }
    const std::uint64_t total = envelope.chunked->total_bytes;
    const std::uint32_t chunks = envelope.chunked->chunk_count;
    Result<wire::ChunkAssembler> assembler =
        wire::ChunkAssembler::Spooled(std::move(envelope), store_->IncomingPath(id, transfer));
    if (!assembler.ok()) {  // The coordinator's disk, not the client's fault: it may retry.
      LogError("round ", round_.run().round, ": cannot take the upload of ", id, ": ",
               assembler.status().message());
      void_transfers_[id] = transfer;
      SendError(client.route, transfer, ErrorCode::kInternal,
                "coordinator could not store the upload");
      return;
    }
    inbound_.emplace(id, InboundUpload{std::move(assembler).value(), bytes});
    LogDebug("round ", round_.run().round, ": receiving the upload of ", id, " in ", chunks,
             " chunks (", total, " bytes)");
    return;
  }

  const wire::Chunk& chunk = std::get<wire::Chunk>(envelope.body);
  Count([](CoordinatorCounters& c) { ++c.chunks_in; });
  const auto open = inbound_.find(id);
  if (open == inbound_.end() || open->second.assembler.transfer() != chunk.transfer) {
    if (const auto v = void_transfers_.find(id);
        v != void_transfers_.end() && v->second == chunk.transfer) {
      Count([](CoordinatorCounters& c) { ++c.chunks_discarded; });  // Already answered.
      return;
    }
    if (open == inbound_.end()) {
      refuse(chunk.transfer,
             Refusal(ErrorCode::kChunkMismatch, "chunk ", chunk.index, " of transfer ",
                     chunk.transfer, ", which is not open (send the whole message again)"));
      return;
    }
  }
  InboundUpload& in = open->second;
  in.bytes += bytes;
  if (Status s = in.assembler.Accept(chunk); !s.ok()) {
    const std::uint64_t transfer = in.assembler.transfer();
    inbound_.erase(open);  // Removes its spool file.
    Count([](CoordinatorCounters& c) { ++c.transfers_voided; });
    refuse(transfer, s);
    return;
  }
  if (!in.assembler.complete()) return;
  const std::uint64_t transfer = in.assembler.transfer();
  const std::size_t total_bytes = in.bytes;
  Result<wire::Envelope> whole = in.assembler.Finish();
  inbound_.erase(open);
  if (!whole.ok()) {
    LogError("round ", round_.run().round, ": cannot read back the upload of ", id, ": ",
             whole.status().message());
    SendError(client.route, transfer, ErrorCode::kInternal,
              "coordinator could not read the upload");
    return;
  }
  if (observer_) observer_(client.route, *whole);
  HandleUpdate(client, transfer, std::move(std::get<wire::Update>(whole->body)), total_bytes);
}

void Coordinator::Impl::DropStaleInbound() {
  std::vector<std::pair<std::string, Status>> stale;
  for (const auto& [id, in] : inbound_) {
    const auto& update = std::get<wire::Update>(in.assembler.head().body);
    if (Result<UploadGate> gate = round_.AdmitUpload(id, update.round, update.ticket); !gate.ok()) {
      stale.emplace_back(id, gate.status());
    }
  }
  for (const auto& [id, why] : stale) {
    const std::uint64_t transfer = inbound_.at(id).assembler.transfer();
    DropInbound(id, why.message());
    if (ClientConnection* client = clients_.FindById(id)) {
      ProtocolError(StrCat("chunked upload from ", id), client->route, transfer,
                    wire::DecodeErrorCode(why),
                    StrCat("upload discarded part-way: ", why.message()));
    }
  }
}

void Coordinator::Impl::DropInbound(const std::string& id, std::string_view why) {
  const auto it = inbound_.find(id);
  if (it == inbound_.end()) return;
  LogWarn("round ", round_.run().round, ": discarding the partial upload of ", id, " (",
          it->second.assembler.received_bytes(), " of ", it->second.assembler.total_bytes(),
          " bytes): ", why);
  void_transfers_[id] = it->second.assembler.transfer();
  inbound_.erase(it);  // Removes its spool file: nothing of it stays in the round.
  Count([](CoordinatorCounters& c) { ++c.transfers_voided; });
}

bool Coordinator::Impl::ResendTask(ClientConnection& client, std::uint64_t ref_sequence) {
  const RoundRun& run = round_.run();
  const auto is = [&](const auto& sequences, const auto& outstanding) {
    const auto it = sequences.find(client.id);
    return it != sequences.end() && it->second == ref_sequence && outstanding.contains(client.id);
  };
  const bool fit = is(run.task_sequence, run.outstanding);
  const bool eval = !fit && is(run.eval_sequence, run.eval_outstanding);
  if (!fit && !eval) return false;
  auto& [round, count] = task_resends_[client.id];
  if (round != run.round) round = run.round, count = 0;
  if (count >= kMaxTaskResends) return false;
  ++count;
  LogWarn("round ", run.round, ": sending the ", fit ? "task" : "evaluation task", " of ",
          client.id, " again (", count, " of ", kMaxTaskResends, ")");
  if (fit) {
    SendTask(client.id);
  } else {
    SendEvalTask(client.id);
  }
  return true;
}

std::size_t Coordinator::Impl::SendChunked(ClientConnection& client, wire::Envelope envelope) {
  envelope.chunked = wire::ChunkedHead{.chunk_bytes = config_.transport.chunk_bytes};
  wire::EncodedMessage head = wire::Encode(envelope, encode_);
  // The chunks read their bytes from one shared copy of each tensor, the same for every client
  // whose task holds the same bytes (FedAvg's global adapter, the corrections): ZeroMQ keeps a
  // reference while a chunk is queued instead of a copy, so sending a round's tasks to N
  // clients costs one adapter of memory, not N.
  auto owners = std::make_shared<std::vector<std::shared_ptr<const std::vector<std::byte>>>>();
  std::size_t frame = 0;
  for (const auto& [name, t] : *wire::TensorsOf(envelope.body)) {  // Name order = frame order.
    std::shared_ptr<const std::vector<std::byte>>& shared = task_tensors_[name];
    if (shared == nullptr || shared->size() != t.data.size() ||
        std::memcmp(shared->data(), t.data.data(), t.data.size()) != 0) {
      shared = std::make_shared<const std::vector<std::byte>>(t.data);
    }
    head.tensor_frames[frame++] = std::span<const std::byte>(*shared);
    owners->push_back(shared);
  }
  const std::span<const std::byte> route = std::as_bytes(std::span<const char>(client.route));
  client.last_sent = clock_.Now();
  std::size_t sent = head.total_bytes();
  // ZeroMQ queues what the connection cannot take yet (send_hwm messages per peer). A chunk it
  // refuses leaves the client with an incomplete transfer, which it reports (CHUNK_MISMATCH) or
  // which the round's deadline ends.
  Status s = router_.Send(head.frames(), route);
  for (std::uint32_t i = 0; s.ok() && i < head.chunked->chunk_count; ++i) {
    const std::vector<std::span<const std::byte>> pieces = wire::ChunkPieces(head, i);
    const wire::EncodedMessage chunk = wire::EncodeChunk(
        client.session_id, client.next_sequence_out++,
        wire::Chunk{envelope.sequence, i, std::uint64_t{i} * head.chunked->chunk_bytes, {}},
        pieces);
    s = router_.SendShared(chunk.frames(), 1, owners, route);
    if (s.ok()) sent += chunk.total_bytes();
  }
  if (!s.ok()) {
    LogWarn("send ", wire::BodyName(envelope.body), " to ", client.id, " (",
            head.chunked->chunk_count, " chunks) failed part-way: ", s.message());
    sent = 0;
  }
  Count([&](CoordinatorCounters& c) { c.bytes_out += sent; });
  return sent;
}

}  // namespace fedlora::server
