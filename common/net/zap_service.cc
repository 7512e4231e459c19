#include "common/net/zap_service.h"

#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <vector>

namespace fedlora::net {
namespace {

constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";

std::string FrameText(zmq_msg_t& m) {
  return std::string(static_cast<const char*>(zmq_msg_data(&m)), zmq_msg_size(&m));
}

}  // namespace

Result<std::unique_ptr<ZapService>> ZapService::Start(void* zmq_context) {
  std::unique_ptr<ZapService> service(new ZapService());
  service->socket_ = zmq_socket(zmq_context, ZMQ_REP);
  if (service->socket_ == nullptr) {
    return Internal("ZAP socket: ", zmq_strerror(zmq_errno()));
  }
  const int linger = 0;
  zmq_setsockopt(service->socket_, ZMQ_LINGER, &linger, sizeof(linger));
  if (zmq_bind(service->socket_, kZapEndpoint) != 0) {
    const int err = zmq_errno();
    zmq_close(service->socket_);
    service->socket_ = nullptr;
    return Unavailable("binding the ZAP handler at ", kZapEndpoint, ": ", zmq_strerror(err),
                       " (another ZAP handler in this ZeroMQ context?)");
  }
  ZapService* raw = service.get();
  service->thread_ = std::thread([raw] { raw->Loop(); });
  return service;
}

ZapService::~ZapService() {
  stop_.store(true, std::memory_order_release);
  wake_.Notify();
  if (thread_.joinable()) thread_.join();
  if (socket_ != nullptr) zmq_close(socket_);
}

Status ZapService::Add(const std::string& domain, ZapHandler handler) {
  std::lock_guard<std::mutex> lock(map_mu_);
  if (!handlers_.emplace(domain, std::move(handler)).second) {
    return Status(StatusCode::kAlreadyExists, StrCat("ZAP domain '", domain, "' is served already"));
  }
  return OkStatus();
}

void ZapService::Remove(const std::string& domain) {
  {
    std::lock_guard<std::mutex> lock(map_mu_);
    handlers_.erase(domain);
  }
  // Wait out a call that may be running the removed handler right now.
  std::lock_guard<std::mutex> wait(call_mu_);
}

void ZapService::Loop() {
  while (!stop_.load(std::memory_order_acquire)) {
    zmq_pollitem_t items[2] = {{socket_, 0, ZMQ_POLLIN, 0}, {nullptr, wake_.read_fd(), ZMQ_POLLIN, 0}};
    const int rc = zmq_poll(items, 2, -1);
    if (rc < 0) {
      if (zmq_errno() == EINTR) continue;
      return;  // ETERM: the context is going away.
    }
    if ((items[1].revents & ZMQ_POLLIN) != 0) wake_.Drain();
    if ((items[0].revents & ZMQ_POLLIN) != 0) Answer();
  }
}

void ZapService::Answer() {
  std::vector<std::string> frames;
  std::vector<unsigned char> credential;
  while (true) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, socket_, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&m);
      if (frames.empty()) return;  // Nothing there after all.
      break;
    }
    if (frames.size() == 6) {  // The first credential: CURVE's 32-byte client key.
      const auto* data = static_cast<const unsigned char*>(zmq_msg_data(&m));
      credential.assign(data, data + zmq_msg_size(&m));
    }
    frames.push_back(frames.size() < 6 ? FrameText(m) : std::string());
    const bool more = zmq_msg_more(&m) != 0;
    zmq_msg_close(&m);
    if (!more) break;
  }

  // RFC 27: version, request id, domain, address, identity, mechanism, credentials...
  std::string status = "500", text = "malformed ZAP request", user_id;
  if (frames.size() >= 6 && frames[0] == "1.0") {
    ZapRequest request;
    request.domain = frames[2];
    request.address = frames[3];
    request.mechanism = frames[5];
    if (request.mechanism == "CURVE" && credential.size() == crypto::kCurveKeyBytes) {
      crypto::CurvePublicKey key;
      std::memcpy(key.bytes.data(), credential.data(), key.bytes.size());
      request.client_key = key;
    }
    std::lock_guard<std::mutex> calling(call_mu_);
    ZapHandler handler;  // A copy: Remove may erase the entry while it runs. What the handler
                         // refers to stays alive, since Remove waits for call_mu_.
    {
      std::lock_guard<std::mutex> lock(map_mu_);
      if (const auto it = handlers_.find(request.domain); it != handlers_.end()) {
        handler = it->second;
      }
    }
    if (!handler) {
      status = "400";
      text = "no authenticator serves this domain";
    } else {
      try {
        ZapVerdict verdict = handler(request);
        status = verdict.allowed ? "200" : "400";
        text = verdict.allowed ? "OK" : verdict.reason;
        if (verdict.allowed) user_id = std::move(verdict.user_id);
      } catch (const std::exception&) {
        status = "500";
        text = "authenticator failed";
      }
    }
  }
  const std::string request_id = frames.size() > 1 ? frames[1] : std::string();
  const std::string reply[6] = {"1.0", request_id, status, text, user_id, ""};
  for (int i = 0; i < 6; ++i) {
    // A REP socket always accepts the reply to the request it just delivered.
    zmq_send(socket_, reply[i].data(), reply[i].size(), i < 5 ? ZMQ_SNDMORE : 0);
  }
}

}  // namespace fedlora::net
