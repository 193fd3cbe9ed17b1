#include "model/chat_template.hpp"

#include <stdexcept>

namespace tern {

namespace {

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

void checkRole(const ChatMessage& m) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    throw std::invalid_argument("chat template: unknown role '" + m.role +
                                "' (expected system, user or assistant)");
}

// BitNet-b1.58-2B-4T, as described in formats.md section 5 and written by its official template:
// every turn is "<Role>: <content><|eot_id|>" with Role in System / User / Assistant, no
// separator between turns and the content kept verbatim; the reply prefix is "Assistant: ".
//   System: s<|eot_id|>User: u<|eot_id|>Assistant: a<|eot_id|>User: u2<|eot_id|>Assistant: 
std::string applyBitnet(const std::vector<ChatMessage>& msgs, bool prefix) {
  std::string out;
  for (const ChatMessage& m : msgs) {
    out += m.role == "system" ? "System: " : m.role == "user" ? "User: " : "Assistant: ";
    out += m.content;
    out += "<|eot_id|>";
  }
  if (prefix) out += "Assistant: ";
  return out;
}

std::string applyLlama3(const std::vector<ChatMessage>& msgs, bool prefix) {
  std::string out;
  for (const ChatMessage& m : msgs)
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
  if (prefix) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string applyChatML(const std::vector<ChatMessage>& msgs, bool prefix) {
  std::string out;
  for (const ChatMessage& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (prefix) out += "<|im_start|>assistant\n";
  return out;
}

// Meta's Llama-2 chat format, BOS left to the tokenizer: a system message goes inside the next
// user turn's [INST] as "<<SYS>>\n{s}\n<</SYS>>\n\n"; each reply is " {a} </s>" and every user
// turn after the first starts with "<s>". The reply needs no prefix (it follows " [/INST]").
std::string applyLlama2(const std::vector<ChatMessage>& msgs) {
  std::string out, system;
  bool first = true;
  for (const ChatMessage& m : msgs) {
    if (m.role == "system") {
      system += m.content;
    } else if (m.role == "user") {
      if (!first) out += "<s>";
      out += "[INST] ";
      if (!system.empty()) out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
      out += m.content + " [/INST]";
      system.clear();
      first = false;
    } else {
      out += " " + m.content + " </s>";
      first = false;
    }
  }
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::builtin(Kind kind) { return ChatTemplate(kind); }

ChatTemplate ChatTemplate::detect(const std::string& t) {
  if (contains(t, "<|start_header_id|>")) return ChatTemplate(Kind::Llama3);
  if (contains(t, "<|im_start|>")) return ChatTemplate(Kind::ChatML);
  if (contains(t, "[INST]")) return ChatTemplate(Kind::Llama2);
  if (contains(t, "Assistant: ") && contains(t, "<|eot_id|>")) return ChatTemplate(Kind::Bitnet2B4T);
  throw std::runtime_error("unrecognised chat template (known: llama3, chatml, llama2, bitnet-2b4t)");
}

ChatTemplate ChatTemplate::forModel(const gguf::File& f, Arch arch) {
  if (arch == Arch::BitnetB158) return ChatTemplate(Kind::Bitnet2B4T);
  if (const gguf::Value* v = f.find("tokenizer.chat_template")) {
    if (const std::string* s = v->asString()) {
      try {
        return detect(*s);
      } catch (const std::runtime_error&) {
        // unrecognised: fall back on the vocab's family below
      }
    }
  }
  return ChatTemplate(f.getStringOr("tokenizer.ggml.model", "") == "gpt2" ? Kind::Llama3
                                                                          : Kind::Llama2);
}

std::string ChatTemplate::apply(const std::vector<ChatMessage>& messages,
                                bool addAssistantPrefix) const {
  for (const ChatMessage& m : messages) checkRole(m);
  switch (kind_) {
    case Kind::Bitnet2B4T: return applyBitnet(messages, addAssistantPrefix);
    case Kind::Llama3: return applyLlama3(messages, addAssistantPrefix);
    case Kind::ChatML: return applyChatML(messages, addAssistantPrefix);
    case Kind::Llama2: return applyLlama2(messages);
  }
  return {};
}

std::string ChatTemplate::name() const {
  switch (kind_) {
    case Kind::Bitnet2B4T: return "bitnet-2b4t";
    case Kind::Llama3: return "llama3";
    case Kind::ChatML: return "chatml";
    case Kind::Llama2: return "llama2";
  }
  return "unknown";
}

std::vector<std::string> ChatTemplate::stopStrings() const {
  switch (kind_) {
    case Kind::Bitnet2B4T:
    case Kind::Llama3: return {"<|eot_id|>", "<|end_of_text|>"};
    case Kind::ChatML: return {"<|im_end|>", "<|endoftext|>"};
    case Kind::Llama2: return {"</s>"};
  }
  return {};
}

}  // namespace tern
