// `tern serve`'s HTTP side: an OpenAI-compatible API over a runtime::Service, on Boost.Beast over
// Boost.Asio.
//
// Threads: one asio::io_context turned by one thread of its own; every connection is a chain of
// asynchronous operations on it (never a thread per connection), so a busy stream cannot starve
// /health. Generations cross into the service's kj thread through Service (kj::Executor) and
// their tokens come back through asio::post. No other thread touches a connection.
//
// Endpoints: POST /v1/chat/completions, POST /v1/completions (stream or not), GET /v1/models,
// GET /health, POST /tokenize, POST /detokenize, GET /metrics, GET / (the chat page).
//
// Limits: a request must arrive whole within readTimeout (slowloris clients are dropped; the same
// bound is the keep-alive idle time), bodies over maxBodyBytes get 413, each write must finish
// within writeTimeout, each completion within requestTimeout. A client that disconnects (seen at
// once: the connection is read while its request runs) has its generations cancelled.
#pragma once

#include "runtime/service.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace prometheus {
class Registry;
}

namespace tern::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;            // 0: any free port
  std::string apiKey;              // required as "Authorization: Bearer KEY"; empty = none
  std::string modelId;             // the id /v1/models lists and requests may name
  uint64_t maxBodyBytes = 8u << 20;
  double readTimeout = 10;         // seconds to receive a whole request; keep-alive idle limit
  double writeTimeout = 30;        // seconds for one write
  double requestTimeout = 600;     // seconds per completion request
  double pingInterval = 5;         // seconds of silence on a stream before an SSE ": ping"
  uint32_t maxTokens = 0;          // largest max_tokens accepted; 0 = the context
  uint32_t maxConnections = 1024;  // more are closed at once
};

class HttpServer {
 public:
  // Listens at once (throws std::runtime_error "cannot listen on HOST:PORT: ..."); the service
  // may still be loading (/health answers 503 until it is ready).
  HttpServer(runtime::Service& service, ServerOptions opts,
             std::shared_ptr<prometheus::Registry> registry);
  ~HttpServer();  // stops: closes every connection, cancels their generations
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;           // bound
  // Call first thing in main's thread, before any thread starts (threads inherit the mask), so
  // that SIGINT / SIGTERM reach only waitForSignal().
  static void blockShutdownSignals();
  // Blocks until SIGINT or SIGTERM; returns which.
  static int waitForSignal();

  struct Impl;  // the listener and what its connections share (http_server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::server
