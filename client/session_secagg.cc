// session_secagg.cc — the client's side of secure aggregation in its session (issue 13): a round
// task that asks for it opens a secagg::ClientProtocol and sends the keys; the roster, the routed
// shares and the unmask request are answered as they come (the session thread, while the job
// thread trains); the trained update goes up as a masked vector (secure_input.h) once the
// neighbours' shares are in. What the coordinator may not ask of an honest client is refused
// with SECAGG_MISMATCH (client_protocol.h).
#include <cmath>
#include <cstring>

#include "client/session_impl.h"
#include "common/crypto/random.h"
#include "common/privacy/gaussian_noise.h"
#include "common/secagg/quantize.h"
#include "common/secagg/secure_input.h"

namespace fedlora::client {

using wire::ErrorCode;

bool ClientSession::Impl::BeginSecureRound(const wire::RoundTask& task, std::uint64_t sequence) {
  if (secure_ && secure_->round == task.round && secure_->ticket == task.ticket) {
    return true;  // The same task again (it was resent): the attempt in hand stands.
  }
  secure_.reset();
  secure_nonces_.push_back(task.ticket.nonce);
  if (secure_nonces_.size() > 64) secure_nonces_.pop_front();
  const wire::SecAggParams& params = *task.secagg;
  Result<secagg::Modulus> modulus = secagg::Modulus::Bits(params.modulus_bits);
  Status valid = modulus.ok() ? secagg::CheckQuantization(
                                    {params.clip, params.levels_bits, params.modulus_bits}, 1)
                              : modulus.status();
  if (valid.ok()) valid = secagg::SecureVectorLength(params).status();
  if (!valid.ok()) {
    LogWarn("round ", task.round, ": refusing a secure-aggregation task: ", valid.message());
    Send(wire::Error{ErrorCode::kInvalidField,
                     StrCat("secure-aggregation parameters: ", valid.message()), sequence});
    return false;
  }
  double noise_stddev = 0;
  if (task.privacy && task.privacy->noise_share_clients > 0) {
    const wire::PrivacyParams& p = *task.privacy;
    noise_stddev = p.noise_multiplier * p.clip / std::sqrt(double{p.noise_share_clients});
    Progress("round ", task.round, ": distributed differential privacy: this client adds noise ",
             "of deviation ", noise_stddev, " (1/", p.noise_share_clients, " of the round's ",
             "variance) to its input before masking");
  }
  secure_.emplace(session_internal::SecureRound{
      task.round, task.ticket, sequence, params, task.plan,
      params.delta ? task.tensors : TensorMap{}, noise_stddev,
      secagg::ClientProtocol(task.round, task.ticket.attempt, *modulus), std::nullopt});
  Progress("round ", task.round, ": secure aggregation, sending keys");
  Send(wire::SecAgg{task.round, task.ticket, secure_->protocol.Keys()});
  return true;
}

void ClientSession::Impl::HandleSecAgg(const wire::SecAgg& message, std::uint64_t sequence) {
  if (!secure_ || secure_->round != message.round || secure_->ticket != message.ticket) {
    LogDebug("ignoring a secure-aggregation ", wire::SecAggStageName(message), " of round ",
             message.round, ": not the task in hand");
    return;
  }
  const auto refuse = [&](const Status& why) {
    LogWarn("round ", message.round, ": refusing the secure-aggregation ",
            wire::SecAggStageName(message), ": ", why.message());
    Send(wire::Error{ErrorCode::kSecAggMismatch, std::string(why.message()), sequence});
  };
  secagg::ClientProtocol& protocol = secure_->protocol;
  if (const auto* roster = std::get_if<wire::SecAggRoster>(&message.stage)) {
    Result<wire::SecAggShares> shares = protocol.OnRoster(*roster);
    if (!shares.ok()) return refuse(shares.status());
    Progress("round ", message.round, ": secure aggregation, sharing keys with ",
             shares->shares.size(), " neighbour(s)");
    Send(wire::SecAgg{message.round, message.ticket, std::move(shares).value()});
  } else if (const auto* routed = std::get_if<wire::SecAggShares>(&message.stage)) {
    if (Status s = protocol.OnShares(*routed); !s.ok()) return refuse(s);
    if (secure_->trained) {
      wire::Update trained = std::move(*secure_->trained);
      secure_->trained.reset();
      SendMasked(trained);
    }
  } else if (const auto* unmask = std::get_if<wire::SecAggUnmask>(&message.stage)) {
    Result<wire::SecAggReveal> reveal = protocol.OnUnmask(*unmask);
    if (!reveal.ok()) return refuse(reveal.status());
    Progress("round ", message.round, ": secure aggregation, revealing ", reveal->shares.size(),
             " share(s) (", unmask->survivors.size(), " survivors, ", unmask->dropped.size(),
             " dropped)");
    Send(wire::SecAgg{message.round, message.ticket, std::move(reveal).value()});
  } else {
    refuse(InvalidArgument("a coordinator does not send ", wire::SecAggStageName(message)));
  }
}

void ClientSession::Impl::UploadSecure(wire::Update trained) {
  if (!secure_->protocol.ready_to_mask()) {
    Progress("round ", trained.round, ": trained; waiting for the neighbours' shares");
    secure_->trained = std::move(trained);
    return;
  }
  SendMasked(trained);
}

void ClientSession::Impl::SendMasked(const wire::Update& trained) {
  const session_internal::SecureRound& s = *secure_;
  // Distributed DP: a fresh seed from the operating system; nobody can predict or replay it.
  const secagg::InputNoise noise{s.noise_stddev, privacy::FreshNoiseSeed()};
  Result<secagg::SecureInput> input =
      secagg::MakeSecureInput(s.params, s.plan, s.sent, trained, crypto::RandomU64(),
                              s.noise_stddev > 0 ? &noise : nullptr);
  Result<std::vector<std::uint32_t>> masked =
      input.ok() ? s.protocol.Mask(std::move(input->words)) : input.status();
  if (!masked.ok()) {
    LogError("round ", trained.round,
             ": cannot make the masked input: ", masked.status().message());
    Send(
        wire::Error{ErrorCode::kInternal, std::string(masked.status().message()), s.task_sequence});
    return;
  }
  wire::Update update;
  update.round = trained.round;
  // The counts travel under the mask, in the weight; the plain fields carry 1.
  update.num_samples = 1;
  update.num_examples = 1;
  update.metrics = trained.metrics;
  update.metrics["secagg_clipped"] = static_cast<double>(input->clipped);
  update.base_version = trained.base_version;
  update.ticket = trained.ticket;
  Tensor words{DType::kU32, {static_cast<std::int64_t>(masked->size())}, {}};
  words.data.resize(masked->size() * sizeof(std::uint32_t));
  std::memcpy(words.data.data(), masked->data(), words.data.size());
  update.tensors.emplace(std::string(secagg::kMaskedTensorName), std::move(words));
  if (input->clipped > 0) {
    LogWarn("round ", trained.round, ": ", input->clipped, " value(s) clipped to +-", s.params.clip,
            " for secure aggregation");
  }
  Progress("round ", trained.round, ": uploading the masked update (", masked->size(), " words)");
  SendPendingUpdate(std::move(update));
}

}  // namespace fedlora::client
