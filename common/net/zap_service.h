// zap_service.h — private to common/net: the ZAP handler thread of one net::Context.
//
// ZeroMQ asks "may this peer connect?" of whoever binds inproc://zeromq.zap.01 in the socket's
// context, during every CURVE handshake (RFC 27). A ZapService binds that endpoint once for the
// context's lifetime and dispatches each request to the handler registered for its domain, so
// several sockets (or successive coordinators in one process) can each authenticate their own
// peers. Requests for a domain without a handler are refused.
//
// Threading: Add and Remove may be called from any thread. Handlers run on the service thread,
// one at a time; after Remove returns, the removed handler is not running and never runs again.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/net/zmq_transport.h"
#include "common/status.h"

namespace fedlora::net {

class ZapService {
 public:
  // Binds the ZAP endpoint in `zmq_context` (a raw void* context) and starts the thread.
  static Result<std::unique_ptr<ZapService>> Start(void* zmq_context);
  ~ZapService();  // Stops and joins the thread, closes the socket.
  ZapService(const ZapService&) = delete;
  ZapService& operator=(const ZapService&) = delete;

  Status Add(const std::string& domain, ZapHandler handler);  // kAlreadyExists if served.
  void Remove(const std::string& domain);

 private:
  ZapService() = default;
  void Loop();
  void Answer();  // Reads one request and replies.

  void* socket_ = nullptr;  // REP; owned by the thread once started.
  WakePipe wake_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex call_mu_;  // Held by the thread while it looks up and runs a handler.
  std::mutex map_mu_;   // Guards handlers_.
  std::map<std::string, ZapHandler, std::less<>> handlers_;
};

}  // namespace fedlora::net
