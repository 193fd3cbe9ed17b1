// libFuzzer target: the chat template renderer. The input is split at NUL bytes into messages;
// each message's first byte picks its role (system / user / assistant, or, for values >= 0xC0,
// an arbitrary role: the text up to the first ':'), the rest is its content. The first byte of
// the input also says whether to add the assistant prefix. Every built-in kind renders the
// messages; only std::invalid_argument (an unknown role) may escape apply(). The whole input,
// as a Jinja template text, also goes through detect(): only std::runtime_error may escape.
#include "model/chat_template.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using namespace tern;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const bool prefix = data[0] & 1;
  std::vector<ChatMessage> msgs;
  bool knownRoles = true;
  size_t pos = 1;
  while (pos < size && msgs.size() < 64) {
    size_t end = all.find('\0', pos);
    if (end == std::string_view::npos) end = size;
    std::string_view seg = all.substr(pos, end - pos);
    pos = end + 1;
    if (seg.empty()) continue;
    const uint8_t r = uint8_t(seg[0]);
    seg.remove_prefix(1);
    ChatMessage m;
    if (r >= 0xC0) {
      const size_t colon = seg.find(':');
      m.role = std::string(seg.substr(0, colon));
      if (colon != std::string_view::npos) seg.remove_prefix(colon + 1);
      else seg = {};
      if (m.role != "system" && m.role != "user" && m.role != "assistant") knownRoles = false;
    } else {
      static const char* const kRoles[] = {"system", "user", "assistant"};
      m.role = kRoles[r % 3];
    }
    m.content = std::string(seg);
    msgs.push_back(std::move(m));
  }
  for (auto kind : {ChatTemplate::Kind::Bitnet2B4T, ChatTemplate::Kind::Llama3,
                    ChatTemplate::Kind::ChatML, ChatTemplate::Kind::Llama2}) {
    const ChatTemplate t = ChatTemplate::builtin(kind);
    (void)t.name();
    (void)t.stopStrings();
    try {
      const std::string out = t.apply(msgs, prefix);
      if (!knownRoles) {
        std::fprintf(stderr, "%s: apply() accepted an unknown role\n", t.name().c_str());
        std::abort();
      }
      // Every content appears verbatim in the prompt (Llama-2 folds a system message into the
      // next user turn and has none without one: not checked there).
      for (const ChatMessage& m : msgs) {
        if (kind == ChatTemplate::Kind::Llama2 && m.role == "system") continue;
        if (out.find(m.content) == std::string::npos) {
          std::fprintf(stderr, "%s: a message's content is missing from the prompt\n",
                       t.name().c_str());
          std::abort();
        }
      }
    } catch (const std::invalid_argument&) {
      if (knownRoles) {
        std::fprintf(stderr, "%s: apply() refused known roles\n", t.name().c_str());
        std::abort();
      }
    }
  }
  try {
    (void)ChatTemplate::detect(std::string(all));
  } catch (const std::runtime_error&) {
  }
  return 0;
}
