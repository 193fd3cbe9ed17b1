#include "client/http_client.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <cstdint>
#include <limits>
#include <stdexcept>

namespace tern::client {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// --- URL ---------------------------------------------------------------------------------------

Url parseUrl(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument("bad URL '" + text + "': " + why);
  };
  const std::string scheme = "http://";
  if (text.rfind("https://", 0) == 0) throw bad("https is not supported (use http://host:port)");
  if (text.rfind(scheme, 0) != 0) throw bad("expected http://host:port");
  std::string rest = text.substr(scheme.size());
  Url u;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    u.basePath = rest.substr(slash);
    rest.resize(slash);
  }
  while (!u.basePath.empty() && u.basePath.back() == '/') u.basePath.pop_back();
  // An OpenAI "base URL" often ends in /v1; the targets below carry it already.
  if (u.basePath.size() >= 3 && u.basePath.compare(u.basePath.size() - 3, 3, "/v1") == 0) {
    u.basePath.resize(u.basePath.size() - 3);
  }
  if (u.basePath.find_first_of("?#") != std::string::npos) throw bad("no query or fragment allowed");
  std::string portText;
  if (!rest.empty() && rest.front() == '[') {  // [v6 address]:port
    const size_t close = rest.find(']');
    if (close == std::string::npos) throw bad("unterminated '['");
    u.host = rest.substr(1, close - 1);
    const std::string after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw bad("expected ':' after ']'");
      portText = after.substr(1);
      if (portText.empty()) throw bad("empty port");
    }
  } else {
    const size_t colon = rest.rfind(':');
    u.host = rest.substr(0, colon);
    if (colon != std::string::npos) {
      portText = rest.substr(colon + 1);
      if (portText.empty()) throw bad("empty port");
    }
  }
  if (u.host.empty()) throw bad("no host");
  if (u.host.find_first_of(":@ ") != std::string::npos && rest.front() != '[') throw bad("bad host");
  if (!portText.empty()) {
    unsigned port = 0;
    const auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
    if (ec != std::errc() || end != portText.data() + portText.size() || port == 0 || port > 65535) {
      throw bad("port must be 1-65535 (got '" + portText + "')");
    }
    u.port = portText;
  }
  return u;
}

// --- SSE framing --------------------------------------------------------------------------------

void SseParser::feed(std::string_view bytes) {
  if (!started_ && !bytes.empty()) {
    // A UTF-8 BOM may open the stream; it can itself be split, so wait for 3 bytes.
    partial_.append(bytes);
    const std::string_view bom = "\xEF\xBB\xBF";
    if (partial_.size() < 3 && bom.substr(0, partial_.size()) == partial_) return;
    started_ = true;
    std::string held = std::move(partial_);
    partial_.clear();
    std::string_view v = held;
    if (v.substr(0, 3) == bom) v.remove_prefix(3);
    feed(v);
    return;
  }
  size_t begin = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (skipLf_) {
      skipLf_ = false;
      if (c == '\n') {
        begin = i + 1;
        continue;
      }
    }
    if (c != '\n' && c != '\r') continue;
    if (partial_.empty()) {
      line(bytes.substr(begin, i - begin));
    } else {
      partial_.append(bytes.substr(begin, i - begin));
      const std::string l = std::move(partial_);
      partial_.clear();
      line(l);
    }
    skipLf_ = c == '\r';
    begin = i + 1;
  }
  partial_.append(bytes.substr(begin));
}

bool SseParser::finish() {
  const bool clean = partial_.empty() && !haveData_;
  partial_.clear();
  data_.clear();
  event_.clear();
  haveData_ = false;
  return clean;
}

void SseParser::line(std::string_view l) {
  if (l.empty()) {  // dispatch
    if (haveData_) {
      Event e{std::move(event_), std::move(data_)};
      onEvent_(e);
    }
    data_.clear();
    event_.clear();
    haveData_ = false;
    return;
  }
  if (l.front() == ':') return;  // comment
  const size_t colon = l.find(':');
  const std::string_view field = l.substr(0, colon);
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (haveData_) data_ += '\n';
    data_.append(value);
    haveData_ = true;
  } else if (field == "event") {
    event_.assign(value);
  }
  // "id", "retry" and unknown fields are ignored.
}

// --- HTTP client --------------------------------------------------------------------------------

struct HttpClient::Impl {
  Impl(asio::any_io_executor ex, Url u, std::string key, std::chrono::milliseconds t)
      : url(std::move(u)), apiKey(std::move(key)), timeout(t), resolver(ex), stream(ex) {}

  Url url;
  std::string apiKey;
  std::chrono::milliseconds timeout;
  tcp::resolver resolver;
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  bool open = false;
  int connects = 0;

  void close() {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream.close();
    buffer.clear();
    open = false;
  }

  // One line for a failed step: action "reading the body of POST /x", prep "from".
  std::string describe(const beast::error_code& ec, const std::string& action,
                       const std::string& prep) const {
    if (ec == beast::error::timeout) {
      return "timed out " + action + " " + prep + " " + url.hostPort() + " (after " +
             std::to_string(timeout.count()) + " ms)";
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset) {
      return url.hostPort() + " closed the connection (" + action + ")";
    }
    if (ec == http::error::partial_message) {
      return url.hostPort() + " closed the connection in the middle of a response (" + action + ")";
    }
    return action + " " + prep + " " + url.hostPort() + ": " + ec.message();
  }

  asio::awaitable<std::string> connect() {
    beast::error_code ec;
    auto results = co_await resolver.async_resolve(url.host, url.port,
                                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return "cannot resolve host '" + url.host + "': " + ec.message();
    stream.expires_after(timeout);
    co_await stream.async_connect(results, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      stream.close();
      if (ec == asio::error::connection_refused) co_return "connection refused to " + url.hostPort();
      co_return describe(ec, "connecting", "to");
    }
    stream.socket().set_option(tcp::no_delay(true), ec);
    buffer.clear();
    open = true;
    ++connects;
    co_return std::string();
  }

  // One exchange on the open connection. gotHead: the response head arrived.
  asio::awaitable<HttpResponse> once(const std::string& method, const std::string& target,
                                     const std::string& body, const BodySink& onBody,
                                     const std::function<void(unsigned, const std::string&)>& onHead,
                                     bool& gotHead) {
    HttpResponse r;
    http::request<http::string_body> req{method == "GET" ? http::verb::get : http::verb::post,
                                         url.basePath + target, 11};
    req.set(http::field::host, url.hostPort());
    req.set(http::field::user_agent, "tern-bench-serve");
    req.set(http::field::accept, "application/json, text/event-stream");
    if (!apiKey.empty()) req.set(http::field::authorization, "Bearer " + apiKey);
    if (method != "GET") {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.keep_alive(true);
    req.prepare_payload();

    beast::error_code ec;
    stream.expires_after(timeout);
    co_await http::async_write(stream, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      close();
      r.error = describe(ec, "sending " + method + " " + target, "to");
      co_return r;
    }
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    stream.expires_after(timeout);
    co_await http::async_read_header(stream, buffer, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      close();
      r.error = describe(ec, "reading the response to " + method + " " + target, "from");
      co_return r;
    }
    gotHead = true;
    r.status = parser.get().result_int();
    r.contentType = std::string(parser.get()[http::field::content_type]);
    if (onHead) onHead(r.status, r.contentType);
    char piece[16384];
    while (!parser.is_done()) {
      parser.get().body().data = piece;
      parser.get().body().size = sizeof piece;
      stream.expires_after(timeout);
      // read_some, not read: hand over each piece as soon as it arrives (token timing).
      co_await http::async_read_some(stream, buffer, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      const size_t n = sizeof piece - parser.get().body().size;
      if (n > 0) {
        if (onBody) {
          onBody(std::string_view(piece, n));
        } else {
          r.body.append(piece, n);
        }
      }
      if (ec) {
        close();
        r.error = describe(ec, "reading the body of " + method + " " + target, "from");
        co_return r;
      }
    }
    if (!parser.keep_alive()) close();
    co_return r;
  }
};

HttpClient::HttpClient(asio::any_io_executor ex, Url url, std::string apiKey,
                       std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(std::move(ex), std::move(url), std::move(apiKey), timeout)) {}

HttpClient::~HttpClient() = default;

namespace {
HttpResponse failed(std::string error) {
  HttpResponse r;
  r.error = std::move(error);
  return r;
}
}  // namespace

int HttpClient::connects() const { return impl_->connects; }

asio::awaitable<HttpResponse> HttpClient::request(
    std::string method, std::string target, std::string body, BodySink onBody,
    std::function<void(unsigned, const std::string&)> onHead) {
  Impl& c = *impl_;
  const bool reused = c.open;
  if (!c.open) {
    std::string err = co_await c.connect();
    if (!err.empty()) co_return failed(std::move(err));
  }
  bool gotHead = false;
  HttpResponse r = co_await c.once(method, target, body, onBody, onHead, gotHead);
  if (!r.error.empty() && reused && !gotHead) {
    // A keep-alive connection the server had closed: one fresh try.
    std::string err = co_await c.connect();
    if (!err.empty()) co_return failed(std::move(err));
    r = co_await c.once(method, target, body, onBody, onHead, gotHead);
  }
  co_return r;
}

}  // namespace tern::client
