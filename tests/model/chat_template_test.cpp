#include "model/chat_template.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <unistd.h>

using tern::ChatMessage;
using tern::ChatTemplate;
using Kind = tern::ChatTemplate::Kind;

namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "2+2?"},
};

// Writes a metadata-only GGUF and opens it.
std::shared_ptr<const tern::gguf::File> ggufWith(const std::string& tag, const std::string& tokModel,
                                                 const std::string* chatTemplate) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() /
               ("tern_chat_" + tag + "_" + std::to_string(::getpid()) + ".gguf");
  tern::gguf::Writer w;
  w.setString("general.architecture", "llama");
  w.setString("tokenizer.ggml.model", tokModel);
  if (chatTemplate) w.setString("tokenizer.chat_template", *chatTemplate);
  w.write(p.string());
  auto f = tern::gguf::File::open(p.string());
  fs::remove(p);
  return f;
}

}  // namespace

TEST_CASE("chat template: bitnet 2B4T") {
  ChatTemplate t = ChatTemplate::builtin(Kind::Bitnet2B4T);
  CHECK(t.name() == "bitnet-2b4t");
  CHECK(t.apply(kConversation, true) ==
        "System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello!<|eot_id|>"
        "User: 2+2?<|eot_id|>Assistant: ");
  CHECK(t.apply({{"user", "Hi"}}, false) == "User: Hi<|eot_id|>");
  CHECK(t.apply({}, true) == "Assistant: ");
  CHECK(t.stopStrings() == std::vector<std::string>{"<|eot_id|>", "<|end_of_text|>"});
}

TEST_CASE("chat template: llama3") {
  ChatTemplate t = ChatTemplate::builtin(Kind::Llama3);
  CHECK(t.name() == "llama3");
  CHECK(t.apply(kConversation, true) ==
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(t.apply({{"user", "x"}}, false) == "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST_CASE("chat template: chatml") {
  ChatTemplate t = ChatTemplate::builtin(Kind::ChatML);
  CHECK(t.name() == "chatml");
  CHECK(t.apply(kConversation, true) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n");
  CHECK(t.stopStrings().front() == "<|im_end|>");
}

TEST_CASE("chat template: llama2") {
  ChatTemplate t = ChatTemplate::builtin(Kind::Llama2);
  CHECK(t.name() == "llama2");
  CHECK(t.apply(kConversation, true) ==
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]");
  CHECK(t.apply({{"user", "Hi"}}, true) == "[INST] Hi [/INST]");
  CHECK(t.stopStrings() == std::vector<std::string>{"</s>"});
}

TEST_CASE("chat template: unknown role") {
  CHECK_THROWS_AS(ChatTemplate::builtin(Kind::ChatML).apply({{"tool", "x"}}, true),
                  std::invalid_argument);
}

TEST_CASE("chat template: detect from Jinja text") {
  // Fragments of the templates these models ship.
  CHECK(ChatTemplate::detect("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}")
            .kind() == Kind::Llama3);
  CHECK(ChatTemplate::detect("{{'<|im_start|>' + message['role'] + '\n'}}").kind() == Kind::ChatML);
  CHECK(ChatTemplate::detect("{{ bos_token + '[INST] ' + content + ' [/INST]' }}").kind() ==
        Kind::Llama2);
  CHECK(ChatTemplate::detect("{{ 'Assistant: ' + message['content'] + '<|eot_id|>' }}").kind() ==
        Kind::Bitnet2B4T);
  CHECK_THROWS_AS(ChatTemplate::detect("{{ messages }}"), std::runtime_error);
}

TEST_CASE("chat template: forModel") {
  std::string chatml = "{% for m in messages %}<|im_start|>{{m.role}}{% endfor %}";
  std::string odd = "{{ something unknown }}";
  auto withChatml = ggufWith("a", "gpt2", &chatml);
  auto withOdd = ggufWith("b", "gpt2", &odd);
  auto spm = ggufWith("c", "llama", nullptr);
  // bitnet-b1.58 always takes the built-in 2B4T format.
  CHECK(ChatTemplate::forModel(*withChatml, tern::Arch::BitnetB158).kind() == Kind::Bitnet2B4T);
  CHECK(ChatTemplate::forModel(*withChatml, tern::Arch::Llama).kind() == Kind::ChatML);
  CHECK(ChatTemplate::forModel(*withOdd, tern::Arch::Llama).kind() == Kind::Llama3);
  CHECK(ChatTemplate::forModel(*spm, tern::Arch::Bitnet).kind() == Kind::Llama2);
}
