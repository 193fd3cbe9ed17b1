// A chat over one sequence: what `tern run --chat` and the HTTP server share about chat
// templates. The model's template (model/chat_template) renders the conversation; a session
// keeps the KV cache across turns by feeding only the text the template adds after what the
// sequence already holds, and starts the sequence again when the template rewrites earlier turns.
#pragma once

#include "model/chat_template.hpp"
#include "model/tokenizer.hpp"
#include "runtime/model_file.hpp"

#include <string>
#include <vector>

namespace tern::runtime {

// The conversation as the model's template writes it, encoded with special tokens parsed and
// the model's BOS rule (BOS first when the vocab asks for it). addGenerationPrompt: end with
// the text that opens the assistant's reply.
std::vector<TokenId> renderChat(const OpenedModel& model, const std::vector<ChatMessage>& messages,
                                bool addGenerationPrompt);

class ChatSession {
 public:
  // systemPrompt: empty = none. addBos = false leaves out BOS even where the vocab asks for it.
  ChatSession(const OpenedModel& model, std::string systemPrompt, bool addBos = true);

  struct Turn {
    std::vector<TokenId> ids;  // to feed after what the sequence holds
    bool restart = false;      // open a fresh sequence first: ids are the whole conversation
  };
  // A user message: the tokens that bring the sequence to the opening of the assistant's reply.
  // The caller feeds them (on a fresh sequence when restart), generates, and passes the reply
  // to reply().
  Turn user(const std::string& text);
  // Records the assistant's reply to the last user message, as generated.
  void reply(const std::string& text);

  const ChatTemplate& chatTemplate() const { return template_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }

 private:
  const Tokenizer& tokenizer_;
  ChatTemplate template_;
  bool addBos_;
  std::vector<ChatMessage> messages_;
  std::string cached_;  // template text whose tokens are in the sequence
};

}  // namespace tern::runtime
