// An asynchronous HTTP/1.1 client (Boost.Beast over Boost.Asio, C++20 coroutines) for
// OpenAI-compatible servers: one keep-alive connection per HttpClient, requests one after
// another, the response body handed over piece by piece as it arrives (chunked, Content-Length
// or close-delimited), and the framing of a Server-Sent Events stream (SseParser).
//
// Only plain http:// is supported. Beast is included by http_client.cpp alone.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tern::client {

// "http://host:port[/base]" -> host, port, base path (without a trailing '/'). Throws
// std::invalid_argument "bad URL '...': ..." for anything else (https, no host, bad port).
struct Url {
  std::string host;
  std::string port = "80";
  std::string basePath;  // "" or "/prefix"
  std::string hostPort() const { return host + ":" + port; }
};
Url parseUrl(const std::string& text);

// The line framing of text/event-stream (WHATWG HTML, "9.2 Server-sent events"): lines end in
// CRLF, LF or CR, possibly split across feed() calls anywhere (even between CR and LF); a
// line starting with ':' is a comment; "field: value" sets a field (one leading space of the
// value dropped); several data lines join with '\n'; a blank line dispatches the event (if it
// has data). An unterminated event at finish() is discarded, as the standard says.
class SseParser {
 public:
  struct Event {
    std::string event;  // the "event:" field ("" = message)
    std::string data;
  };
  explicit SseParser(std::function<void(const Event&)> onEvent) : onEvent_(std::move(onEvent)) {}
  void feed(std::string_view bytes);
  // End of stream: true when nothing was left pending (no partial line, no undispatched data).
  bool finish();

 private:
  void line(std::string_view l);
  std::function<void(const Event&)> onEvent_;
  std::string partial_;  // an unterminated line
  std::string data_;
  std::string event_;
  bool haveData_ = false;
  bool skipLf_ = false;  // the last byte was a CR ending a line: a following LF belongs to it
  bool started_ = false;  // a leading UTF-8 BOM is dropped
};

struct HttpResponse {
  std::string error;  // empty on success; else one line naming what failed (no status check)
  unsigned status = 0;
  std::string contentType;
  std::string body;  // collected only when no body sink was given
};

// One connection to Url, reconnected when the server closes it. Not thread-safe: use it from
// one coroutine at a time, on the executor it was made with.
class HttpClient {
 public:
  using BodySink = std::function<void(std::string_view)>;
  // timeout: the longest wait for connecting, or for any one read or write.
  HttpClient(boost::asio::any_io_executor ex, Url url, std::string apiKey = {},
             std::chrono::milliseconds timeout = std::chrono::seconds(60));
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // method "GET" or "POST"; target is appended to the URL's base path; body (POST) is sent as
  // application/json. With onBody, each piece of the body goes there as it arrives (status
  // and content type are known by then: see onHead) instead of into HttpResponse::body.
  // A request on a reused connection that fails before any response byte is retried once on a
  // fresh connection (the server may have closed an idle keep-alive connection).
  boost::asio::awaitable<HttpResponse> request(std::string method, std::string target,
                                               std::string body = {}, BodySink onBody = {},
                                               std::function<void(unsigned, const std::string&)> onHead = {});
  // Connections opened so far (1 + reconnects).
  int connects() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::client
