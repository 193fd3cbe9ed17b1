// runtime::ChatSession and renderChat on stories260K (a SentencePiece vocab: the Llama-2 template).
#include "runtime/chat_session.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace tern;
using namespace tern::runtime;

namespace {

const std::string kStories = std::string(TERN_TEST_DATA) + "/stories260K/stories260K.gguf";

}  // namespace

TEST_CASE("chat session: the first turn is the rendered conversation, later turns only the new text") {
  const OpenedModel model = openModel(kStories);
  const Tokenizer& tok = *model.tokenizer;
  REQUIRE(tok.vocab().bos >= 0);
  ChatSession chat(model, "be brief");
  CHECK(chat.chatTemplate().name() == "llama2");

  const ChatSession::Turn t1 = chat.user("hi");
  CHECK_FALSE(t1.restart);
  const std::vector<ChatMessage> first{{"system", "be brief"}, {"user", "hi"}};
  CHECK(t1.ids == renderChat(model, first, true));
  REQUIRE_FALSE(t1.ids.empty());
  CHECK(t1.ids.front() == tok.vocab().bos);

  chat.reply("hello");
  const ChatSession::Turn t2 = chat.user("more");
  CHECK_FALSE(t2.restart);
  // Only the text after what the sequence holds, without a BOS of the tokenizer's (the
  // template may write "<s>" itself: Llama-2 does between turns).
  std::vector<ChatMessage> all = first;
  all.push_back({"assistant", "hello"});
  const std::string held = chat.chatTemplate().apply(all, false);
  all.push_back({"user", "more"});
  const std::string full = chat.chatTemplate().apply(all, true);
  REQUIRE(full.compare(0, held.size(), held) == 0);
  CHECK(t2.ids == tok.encode(full.substr(held.size()), /*addBos=*/false, /*parseSpecial=*/true));
  CHECK(chat.messages().size() == 4);
}

TEST_CASE("chat session: addBos = false leaves BOS out") {
  const OpenedModel model = openModel(kStories);
  ChatSession chat(model, "", /*addBos=*/false);
  const ChatSession::Turn t = chat.user("hi");
  REQUIRE_FALSE(t.ids.empty());
  CHECK(t.ids.front() != model.tokenizer->vocab().bos);
  CHECK(chat.messages().size() == 1);  // no system message
}
