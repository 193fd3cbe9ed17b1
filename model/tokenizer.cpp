// Tokenizer: shared parts (token index, special-token partitioning, decode) and the factory.
#include "model/tokenizer.hpp"
#include "model/tokenizer_impl.hpp"

#include <algorithm>
#include <stdexcept>

namespace tern {

std::unique_ptr<Tokenizer> Tokenizer::create(Vocab vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) throw std::invalid_argument("tokenizer: empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) throw std::invalid_argument("tokenizer: vocab too large");
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    throw std::invalid_argument("tokenizer: " + std::to_string(vocab.scores.size()) +
                                " scores for " + std::to_string(n) + " tokens");
  }
  if (!vocab.types.empty() && vocab.types.size() != n) {
    throw std::invalid_argument("tokenizer: " + std::to_string(vocab.types.size()) +
                                " token types for " + std::to_string(n) + " tokens");
  }
  for (TokenId id : {vocab.bos, vocab.eos, vocab.unk, vocab.pad, vocab.eot}) {
    if (id < -1 || id >= static_cast<TokenId>(n)) {
      throw std::invalid_argument("tokenizer: special token id " + std::to_string(id) +
                                  " out of range");
    }
  }
  if (vocab.model == "llama") return detail::makeSpmTokenizer(std::move(vocab));
  if (vocab.model == "gpt2") {
    if (!detail::preSplitFor(vocab.pre)) {
      throw std::invalid_argument("tokenizer: unsupported pre-tokenizer '" + vocab.pre +
                                  "' (supported: llama-bpe/llama3, gpt-2/default)");
    }
    return detail::makeBpeTokenizer(std::move(vocab));
  }
  throw std::invalid_argument("tokenizer: unsupported model '" + vocab.model +
                              "' (supported: llama, gpt2)");
}

void Tokenizer::buildIndex() {
  const auto& tokens = vocab_.tokens;
  index_ = detail::StringIndex(tokens);  // later duplicates win
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].empty()) continue;
    const TokenType t = type(static_cast<TokenId>(i));
    if (t == TokenType::UserDefined) specialsUser_.push_back(static_cast<TokenId>(i));
    if (t == TokenType::UserDefined || t == TokenType::Control || t == TokenType::Unknown) {
      specialsAll_.push_back(static_cast<TokenId>(i));
    }
  }
  auto longestFirst = [&tokens](TokenId a, TokenId b) {
    return tokens[a].size() != tokens[b].size() ? tokens[a].size() > tokens[b].size() : a < b;
  };
  std::sort(specialsAll_.begin(), specialsAll_.end(), longestFirst);
  std::sort(specialsUser_.begin(), specialsUser_.end(), longestFirst);
}

std::optional<TokenId> Tokenizer::find(std::string_view tokenText) const {
  const int32_t id = index_.find(tokenText);
  if (id < 0) return std::nullopt;
  return id;
}

TokenType Tokenizer::type(TokenId id) const {
  checkId(id);
  return vocab_.types.empty() ? TokenType::Normal : vocab_.types[id];
}

void Tokenizer::checkId(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) {
    throw std::out_of_range("token id " + std::to_string(id) + " out of range (vocab of " +
                            std::to_string(vocab_.tokens.size()) + ")");
  }
}

bool Tokenizer::isEog(TokenId id) const {
  return std::find(vocab_.eogIds.begin(), vocab_.eogIds.end(), id) != vocab_.eogIds.end();
}

std::vector<Tokenizer::Fragment> Tokenizer::partition(std::string_view text,
                                                      bool parseSpecial) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  if (text.size() > UINT32_MAX) throw std::length_error("tokenizer: input text over 4 GiB");
  frags.push_back({-1, 0, static_cast<uint32_t>(text.size())});
  const std::vector<TokenId>& specials = parseSpecial ? specialsAll_ : specialsUser_;
  std::vector<Fragment> next;
  for (TokenId sid : specials) {
    const std::string_view special = vocab_.tokens[sid];
    next.clear();
    bool changed = false;
    for (const Fragment& fr : frags) {
      if (fr.token >= 0 || fr.end - fr.begin < special.size()) {
        next.push_back(fr);
        continue;
      }
      uint32_t pos = fr.begin;
      while (true) {
        const std::string_view rest = text.substr(pos, fr.end - pos);
        const size_t hit = rest.find(special);
        if (hit == std::string_view::npos) break;
        changed = true;
        const uint32_t at = pos + static_cast<uint32_t>(hit);
        if (at > pos) next.push_back({-1, pos, at});
        next.push_back({sid, at, at + static_cast<uint32_t>(special.size())});
        pos = at + static_cast<uint32_t>(special.size());
      }
      if (pos < fr.end) next.push_back({-1, pos, fr.end});
    }
    if (changed) frags.swap(next);
  }
  return frags;
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool special) const {
  std::string out;
  // SentencePiece: the "▁" prefix the encoder added comes back as a leading space on the first
  // token after an optional BOS; drop it (llama.cpp / llama2.c).
  size_t stripAt = ids.size();
  if (vocab_.model == "llama" && vocab_.addSpacePrefix) {
    stripAt = (!ids.empty() && ids[0] == vocab_.bos) ? 1 : 0;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string piece = tokenToPiece(ids[i], special);
    if (i == stripAt && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    out += piece;
  }
  return out;
}

}  // namespace tern
