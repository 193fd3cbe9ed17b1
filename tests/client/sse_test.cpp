// The SSE line framing, URL parsing and the percentile math of client/.
#include "client/http_client.hpp"
#include "client/serve_bench.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

using tern::client::parseUrl;
using tern::client::percentile;
using tern::client::SseParser;

namespace {

struct Collected {
  std::vector<SseParser::Event> events;
  bool clean = false;
};

// Feeds `stream` cut at the given offsets (ascending), then finishes.
Collected parseCut(const std::string& stream, const std::vector<size_t>& cuts) {
  Collected out;
  SseParser p([&](const SseParser::Event& e) { out.events.push_back(e); });
  size_t at = 0;
  for (size_t c : cuts) {
    p.feed(std::string_view(stream).substr(at, c - at));
    at = c;
  }
  p.feed(std::string_view(stream).substr(at));
  out.clean = p.finish();
  return out;
}

Collected parse(const std::string& stream) { return parseCut(stream, {}); }

bool same(const std::vector<SseParser::Event>& a, const std::vector<SseParser::Event>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].event != b[i].event || a[i].data != b[i].data) return false;
  }
  return true;
}

// A stream using every kind of line ending, comments, multi-line data, named events, fields
// without a space and a final [DONE]; the events it holds, by the standard's rules.
const std::string kStream =
    ": ping\r\n"
    "data: {\"a\":1}\r\n\r\n"
    "data:{\"b\":2}\n\n"
    "event: error\r"
    "data: line one\r"
    "data:  two spaces\r\r"
    ":comment with data: inside\n"
    "id: 7\n"
    "retry: 100\n"
    "data\n"
    "\n"
    "event: lonely\n\n"  // no data: not dispatched
    "data: [DONE]\r\n\r\n";
const std::vector<SseParser::Event> kEvents = {
    {"", "{\"a\":1}"}, {"", "{\"b\":2}"}, {"error", "line one\n two spaces"}, {"", ""}, {"", "[DONE]"}};

}  // namespace

TEST_CASE("client sse: events of a stream in one piece") {
  const Collected c = parse(kStream);
  CHECK(same(c.events, kEvents));
  CHECK(c.clean);
}

TEST_CASE("client sse: the same events at every split point and byte by byte") {
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    CAPTURE(cut);
    CHECK(same(parseCut(kStream, {cut}).events, kEvents));
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < kStream.size(); ++i) every.push_back(i);
  CHECK(same(parseCut(kStream, every).events, kEvents));
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < kStream.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    CAPTURE(trial);
    CHECK(same(parseCut(kStream, cuts).events, kEvents));
  }
}

TEST_CASE("client sse: a CR and its LF in different pieces end one line") {
  // Were the LF taken for a blank line, "x" and "y" would be two events.
  const Collected c = parseCut("data: x\r\ndata: y\r\n\r\n", {8});
  REQUIRE(c.events.size() == 1);
  CHECK(c.events[0].data == "x\ny");
  // CR CR is two line ends (the second a blank line): dispatch.
  const Collected d = parseCut("data: x\r\rdata: y\n\n", {8});
  REQUIRE(d.events.size() == 2);
  CHECK(d.events[0].data == "x");
  CHECK(d.events[1].data == "y");
}

TEST_CASE("client sse: comments, BOM, and an unterminated event") {
  CHECK(parse(": only a comment\n\n").events.empty());
  const Collected bom = parseCut("\xEF\xBB\xBF" "data: after bom\n\n", {1, 2});
  REQUIRE(bom.events.size() == 1);
  CHECK(bom.events[0].data == "after bom");
  const Collected cut = parse("data: one\n\ndata: half");
  REQUIRE(cut.events.size() == 1);  // the standard discards an event without its blank line
  CHECK(cut.events[0].data == "one");
  CHECK_FALSE(cut.clean);
  CHECK_FALSE(parse("data: no blank line\n").clean);
}

TEST_CASE("client url: parsing") {
  const auto u = parseUrl("http://127.0.0.1:8080");
  CHECK(u.host == "127.0.0.1");
  CHECK(u.port == "8080");
  CHECK(u.basePath.empty());
  CHECK(parseUrl("http://localhost:9/v1/").basePath.empty());
  CHECK(parseUrl("http://localhost:9/api/v1").basePath == "/api");
  CHECK(parseUrl("http://example.com").port == "80");
  CHECK(parseUrl("http://[::1]:7000").host == "::1");
  for (const char* bad : {"https://h:1", "127.0.0.1:8080", "http://:80", "http://h:0", "http://h:99999",
                          "http://h:", "http://h:8x", "http://a:b:c", "http://h:1/x?y"}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(parseUrl(bad), doctest::Contains("bad URL"), std::invalid_argument);
  }
}

TEST_CASE("client percentile: linear interpolation between closest ranks") {
  const std::vector<double> v = {5, 1, 4, 2, 3};  // unsorted on purpose
  CHECK(percentile(v, 0) == 1);
  CHECK(percentile(v, 50) == 3);
  CHECK(percentile(v, 100) == 5);
  CHECK(percentile(v, 25) == 2);
  CHECK(percentile(v, 99) == doctest::Approx(4.96));  // rank 0.99 * 4 = 3.96
  CHECK(percentile({10, 20}, 50) == 15);
  CHECK(percentile({10, 20}, 90) == doctest::Approx(19));
  CHECK(percentile({7}, 99) == 7);
  CHECK(std::isnan(percentile({}, 50)));
}
