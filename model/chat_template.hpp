// Chat templates: turn a list of messages into the prompt text a chat model was trained on.
// Built-in formats only (no Jinja interpreter): a GGUF's `tokenizer.chat_template` is recognised
// by distinctive substrings, as llama.cpp does. BOS is never written here: the tokenizer adds it.
// The special-token texts in the result ("<|eot_id|>", "</s>", ...) must be encoded with
// parseSpecial = true.
#pragma once

#include "model/config.hpp"
#include "model/gguf.hpp"

#include <string>
#include <vector>

namespace tern {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Kind {
    Bitnet2B4T,  // "System: s<|eot_id|>User: u<|eot_id|>Assistant: a<|eot_id|>"
    Llama3,      // "<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>"
    ChatML,      // "<|im_start|>role\ncontent<|im_end|>\n"
    Llama2,      // "[INST] <<SYS>>\ns\n<</SYS>>\n\nu [/INST] a </s><s>[INST] u2 [/INST]"
  };

  static ChatTemplate builtin(Kind kind);
  // Recognises a Jinja template by its distinctive substrings: "<|start_header_id|>" -> Llama3,
  // "<|im_start|>" -> ChatML, "[INST]" -> Llama2, "Assistant: " with "<|eot_id|>" -> Bitnet2B4T.
  // Throws std::runtime_error for anything else.
  static ChatTemplate detect(const std::string& jinjaTemplateText);
  // bitnet-b1.58: the built-in 2B4T template (converted files may embed another one). Otherwise
  // the file's tokenizer.chat_template if present and recognised; else Llama3 for a gpt2 (BPE)
  // vocab and Llama2 for anything else (SentencePiece).
  static ChatTemplate forModel(const gguf::File& f, Arch arch);

  // Throws std::invalid_argument for a role other than system / user / assistant.
  // addAssistantPrefix: end with the text that opens the assistant's reply.
  std::string apply(const std::vector<ChatMessage>& messages, bool addAssistantPrefix) const;
  Kind kind() const { return kind_; }
  std::string name() const;  // "bitnet-2b4t", "llama3", "chatml", "llama2"
  // Texts that end an assistant reply (decoded with special tokens shown).
  std::vector<std::string> stopStrings() const;

 private:
  explicit ChatTemplate(Kind kind) : kind_(kind) {}
  Kind kind_;
};

}  // namespace tern
