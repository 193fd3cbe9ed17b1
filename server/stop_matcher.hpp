// Stop strings matched on the generated text across token boundaries. Text that could be the
// start of a stop string is held back until the next piece decides it, so a stop string is never
// emitted, not even in part.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tern::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Appends a piece; returns the text that is now safe to emit. After a match, stopped() is true
  // and the returned text ends right before the stop string; later pieces are ignored.
  std::string push(std::string_view piece);
  // The held-back text at the end of the generation (no stop string followed).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace tern::server
