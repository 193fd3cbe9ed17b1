#include "server/stop_matcher.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using tern::server::StopMatcher;

namespace {

// Feeds the pieces; returns everything emitted (pushes, then flush unless stopped).
std::string run(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += m.push(p);
  out += m.flush();
  return out;
}

}  // namespace

TEST_CASE("stop matcher: a stop string split over pieces is cut, never emitted") {
  StopMatcher m({"END"});
  std::string seen;
  seen += m.push("abc E");
  CHECK(seen == "abc ");  // "E" may start the stop string: held back
  seen += m.push("N");
  CHECK(seen == "abc ");
  seen += m.push("Dxyz");
  CHECK(m.stopped());
  CHECK(seen == "abc ");
  CHECK(m.push("more") == "");
  CHECK(m.flush() == "");
}

TEST_CASE("stop matcher: a false start is released when the next piece decides it") {
  StopMatcher m({"END"});
  CHECK(m.push("xE") == "x");
  CHECK(m.push("Nq") == "ENq");
  CHECK_FALSE(m.stopped());
  CHECK(m.push("E") == "");
  CHECK(m.flush() == "E");  // the end of the generation releases what was held
}

TEST_CASE("stop matcher: the earliest of several stop strings wins; no stops passes all through") {
  StopMatcher m({"world", "lo w"});
  CHECK(run(m, {"hel", "lo wor", "ld"}) == "hel");
  CHECK(m.stopped());
  StopMatcher none({});
  CHECK(run(none, {"a", "b", ""}) == "ab");
  StopMatcher multi({"\n\n"});
  CHECK(run(multi, {"line\n", "\nnext"}) == "line");
}

TEST_CASE("stop matcher: every split of a text gives the same output") {
  const std::string text = "one two <stop> three";
  for (size_t a = 0; a <= text.size(); ++a) {
    for (size_t b = a; b <= text.size(); ++b) {
      StopMatcher m({"<stop>", "zzz"});
      const std::string out =
          run(m, {text.substr(0, a), text.substr(a, b - a), text.substr(b)});
      CHECK(out == "one two ");
    }
  }
}
