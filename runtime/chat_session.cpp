#include "runtime/chat_session.hpp"

#include <utility>

namespace tern::runtime {

std::vector<TokenId> renderChat(const OpenedModel& model, const std::vector<ChatMessage>& messages,
                                bool addGenerationPrompt) {
  const ChatTemplate tmpl = ChatTemplate::forModel(*model.file, model.cfg.arch);
  return model.tokenizer->encode(tmpl.apply(messages, addGenerationPrompt), /*addBos=*/true,
                                 /*parseSpecial=*/true);
}

ChatSession::ChatSession(const OpenedModel& model, std::string systemPrompt, bool addBos)
    : tokenizer_(*model.tokenizer),
      template_(ChatTemplate::forModel(*model.file, model.cfg.arch)),
      addBos_(addBos) {
  if (!systemPrompt.empty()) messages_.push_back({"system", std::move(systemPrompt)});
}

ChatSession::Turn ChatSession::user(const std::string& text) {
  messages_.push_back({"user", text});
  const std::string full = template_.apply(messages_, true);
  Turn t;
  std::string delta;
  if (full.compare(0, cached_.size(), cached_) == 0) {
    delta = full.substr(cached_.size());
  } else {  // the template rewrote earlier turns: the sequence starts again
    t.restart = true;
    delta = full;
  }
  // BOS opens a sequence, never a turn fed after others.
  const bool first = t.restart || cached_.empty();
  t.ids = tokenizer_.encode(delta, addBos_ && first, /*parseSpecial=*/true);
  cached_ = full;
  return t;
}

void ChatSession::reply(const std::string& text) {
  messages_.push_back({"assistant", text});
  cached_ = template_.apply(messages_, false);
}

}  // namespace tern::runtime
