// SentencePiece-style tokenizer ("llama"): spaces become U+2581, then adjacent pieces are merged
// greedily by the score of the merged vocab token (highest first, leftmost on ties); pieces
// missing from the vocab fall back to <0xAB> byte tokens.
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"

#include <array>
#include <cstdio>
#include <queue>

namespace tern::detail {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 "▁"

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(Vocab v) : Tokenizer(std::move(v)) {
    byteTokens_.fill(-1);
    char name[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (auto id = find(name)) byteTokens_[b] = *id;
    }
  }

  std::vector<TokenId> encode(std::string_view text, bool addBos,
                              bool parseSpecial) const override {
    std::vector<TokenId> out;
    if (addBos && vocab_.addBos && vocab_.bos >= 0) out.push_back(vocab_.bos);
    bool prevSpecial = true;  // the space prefix goes at the start and after special tokens
    std::string escaped;
    for (const Fragment& fr : partition(text, parseSpecial)) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
        prevSpecial = true;
        continue;
      }
      escaped.clear();
      if (vocab_.addSpacePrefix && prevSpecial) escaped += kSpaceMarker;
      for (char c : text.substr(fr.begin, fr.end - fr.begin)) {
        if (c == ' ') {
          escaped += kSpaceMarker;
        } else {
          escaped.push_back(c);
        }
      }
      encodeEscaped(escaped, out);
      prevSpecial = false;
    }
    return out;
  }

  std::string tokenToPiece(TokenId id, bool special) const override {
    const TokenType t = type(id);
    const std::string& text = vocab_.tokens[id];
    switch (t) {
      case TokenType::Control:
        return special ? text : std::string();
      case TokenType::Unknown:
        return special ? text : std::string("\xE2\x96\x85");  // U+2585, as llama.cpp
      case TokenType::UserDefined:
        return text;
      case TokenType::Byte: {
        if (text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>') {
          unsigned v = 0;
          if (std::sscanf(text.c_str() + 3, "%2x", &v) == 1) return std::string(1, static_cast<char>(v));
        }
        return text;
      }
      default: {
        std::string out;
        out.reserve(text.size());
        for (size_t i = 0; i < text.size();) {
          if (text.compare(i, kSpaceMarker.size(), kSpaceMarker) == 0) {
            out.push_back(' ');
            i += kSpaceMarker.size();
          } else {
            out.push_back(text[i++]);
          }
        }
        return out;
      }
    }
  }

 private:
  struct Symbol {
    int32_t prev, next;
    uint32_t offset, length;  // bytes in the escaped text; length 0 = merged away
  };
  struct Bigram {
    float score;
    int32_t left, right;
    uint32_t length;  // bytes of the merged piece when queued
    TokenId id;
  };
  struct BigramOrder {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  void encodeEscaped(std::string_view s, std::vector<TokenId>& out) const {
    std::vector<Symbol> syms;
    syms.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      const size_t len = std::min(unicode::utf8SeqLen(static_cast<uint8_t>(s[i])), s.size() - i);
      const auto idx = static_cast<int32_t>(syms.size());
      syms.push_back({idx - 1, idx + 1, static_cast<uint32_t>(i), static_cast<uint32_t>(len)});
      i += len;
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
    auto tryAdd = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const uint32_t len = syms[left].length + syms[right].length;
      const std::optional<TokenId> id = find(s.substr(syms[left].offset, len));
      if (!id) return;
      const float score = vocab_.scores.empty() ? 0.0f : vocab_.scores[*id];
      queue.push({score, left, right, len, *id});
    };
    for (size_t i = 1; i < syms.size(); ++i) {
      tryAdd(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
    }
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = syms[b.left];
      Symbol& r = syms[b.right];
      if (l.length == 0 || r.length == 0 || l.length + r.length != b.length) continue;
      l.length += r.length;
      r.length = 0;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = b.left;
      tryAdd(l.prev, b.left);
      tryAdd(b.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) {
      const std::string_view piece = s.substr(syms[i].offset, syms[i].length);
      if (const std::optional<TokenId> id = find(piece)) {
        out.push_back(*id);
        continue;
      }
      for (char c : piece) {
        const TokenId bt = byteTokens_[static_cast<uint8_t>(c)];
        if (bt >= 0) {
          out.push_back(bt);
        } else if (vocab_.unk >= 0) {
          out.push_back(vocab_.unk);
        }
      }
    }
  }

  std::array<TokenId, 256> byteTokens_;
};

}  // namespace

std::unique_ptr<Tokenizer> makeSpmTokenizer(Vocab vocab) {
  return std::make_unique<SpmTokenizer>(std::move(vocab));
}

}  // namespace tern::detail
