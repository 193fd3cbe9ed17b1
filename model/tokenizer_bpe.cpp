// Byte-level BPE ("gpt2"): the text is split by the pre-tokenizer rules, each word's bytes are
// mapped through the GPT-2 byte-to-unicode table and merged pairwise by merge rank.
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"

#include <array>
#include <queue>

namespace tern::detail {

std::optional<PreSplit> preSplitFor(std::string_view pre) {
  for (std::string_view name : {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3",
                                "pixtral"}) {
    if (pre == name) return PreSplit::Llama3;
  }
  for (std::string_view name : {"gpt-2", "gpt2", "default"}) {
    if (pre == name) return PreSplit::Gpt2;
  }
  return std::nullopt;
}

namespace {

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct Chars {
  std::vector<unicode::DecodedChar> dec;
  std::vector<uint8_t> cls;

  explicit Chars(std::string_view text) : dec(unicode::decodeUtf8(text)) {
    cls.resize(dec.size());
    for (size_t i = 0; i < dec.size(); ++i) {
      const uint32_t cp = dec[i].cp;
      if (cp == unicode::kInvalidCodepoint) {
        cls[i] = kOther;
      } else if (unicode::isLetter(cp)) {
        cls[i] = kLetter;
      } else if (unicode::isNumber(cp)) {
        cls[i] = kNumber;
      } else if (unicode::isSpace(cp)) {
        cls[i] = kSpace;
      } else {
        cls[i] = kOther;
      }
    }
  }
  size_t size() const { return dec.size(); }
  uint32_t cp(size_t i) const { return dec[i].cp; }
  bool is(size_t i, CharClass c) const { return i < dec.size() && cls[i] == c; }
  bool crlf(size_t i) const { return i < dec.size() && (dec[i].cp == '\r' || dec[i].cp == '\n'); }
};

// Simple case folding for the letters of the contractions ("ſ" U+017F folds to "s").
uint32_t foldContraction(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';
  return cp;
}

// 's|'t|'re|'ve|'m|'ll|'d at i; returns the match length in chars (0: none).
size_t matchContraction(const Chars& c, size_t i, bool ignoreCase) {
  if (c.cp(i) != '\'' || i + 1 >= c.size()) return 0;
  auto at = [&](size_t k) { return ignoreCase ? foldContraction(c.cp(k)) : c.cp(k); };
  const uint32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= c.size()) return 0;
  const uint32_t c2 = at(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

size_t runEnd(const Chars& c, size_t j, CharClass cls) {
  while (c.is(j, cls)) ++j;
  return j;
}

// Whitespace alternatives shared by both splits, at a whitespace char i:
// [\s*[\r\n]+ (Llama-3 only)] | \s+(?!\S) | \s+
size_t matchSpace(const Chars& c, size_t i, bool crlfRule) {
  const size_t j = runEnd(c, i, kSpace);
  if (crlfRule) {
    for (size_t k = j; k > i; --k) {
      if (c.crlf(k - 1)) return k;
    }
  }
  if (j == c.size() || j - i == 1) return j;
  return j - 1;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
size_t matchLlama3(const Chars& c, size_t i) {
  if (size_t len = matchContraction(c, i, true)) return i + len;
  if (!c.is(i, kLetter) && !c.is(i, kNumber) && !c.crlf(i) && c.is(i + 1, kLetter)) {
    return runEnd(c, i + 1, kLetter);
  }
  if (c.is(i, kLetter)) return runEnd(c, i, kLetter);
  if (c.is(i, kNumber)) {
    size_t j = i;
    while (j - i < 3 && c.is(j, kNumber)) ++j;
    return j;
  }
  const size_t k = (c.cp(i) == ' ' && c.is(i + 1, kOther)) ? i + 1 : i;
  if (c.is(k, kOther)) {
    size_t j = runEnd(c, k, kOther);
    while (c.crlf(j)) ++j;
    return j;
  }
  return matchSpace(c, i, true);
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t matchGpt2(const Chars& c, size_t i) {
  if (size_t len = matchContraction(c, i, false)) return i + len;
  const size_t k = (c.cp(i) == ' ' && i + 1 < c.size() && !c.is(i + 1, kSpace)) ? i + 1 : i;
  for (CharClass cls : {kLetter, kNumber, kOther}) {
    if (c.is(k, cls)) return runEnd(c, k, cls);
  }
  return matchSpace(c, i, false);
}

}  // namespace

std::vector<std::pair<uint32_t, uint32_t>> preTokenize(std::string_view text, PreSplit split) {
  std::vector<std::pair<uint32_t, uint32_t>> words;
  const Chars c(text);
  for (size_t i = 0; i < c.size();) {
    size_t j = split == PreSplit::Llama3 ? matchLlama3(c, i) : matchGpt2(c, i);
    if (j <= i) j = i + 1;  // unreachable: every char class has an alternative
    const uint32_t begin = c.dec[i].offset;
    const uint32_t end = j < c.size() ? c.dec[j].offset : static_cast<uint32_t>(text.size());
    words.emplace_back(begin, end);
    i = j;
  }
  return words;
}

namespace {

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(Vocab v) : Tokenizer(std::move(v)), split_(*preSplitFor(vocab_.pre)) {
    for (int b = 0; b < 256; ++b) {
      byteSymbols_[b] = find(unicode::byteToUtf8(static_cast<uint8_t>(b))).value_or(-1);
    }
    // A merge's priority is the index of the first merge producing the same token, so that
    // alternative splits of one token tie and the leftmost pair wins (tiktoken's rule).
    std::vector<int32_t> firstIndex(vocab_.tokens.size(), -1);
    merges_.reserve(vocab_.merges.size());
    std::string joined;
    for (size_t m = 0; m < vocab_.merges.size(); ++m) {
      const std::string& line = vocab_.merges[m];
      const size_t sp = line.find(' ', 1);
      if (sp == std::string::npos) continue;
      const std::string_view left = std::string_view(line).substr(0, sp);
      const std::string_view right = std::string_view(line).substr(sp + 1);
      joined.assign(left);
      joined.append(right);
      const auto l = find(left), r = find(right), res = find(joined);
      if (!l || !r || !res) continue;
      if (firstIndex[*res] < 0) firstIndex[*res] = static_cast<int32_t>(m);
      merges_.tryInsert(pairKey(*l, *r), Merge{firstIndex[*res], *res});
    }
  }

  std::vector<TokenId> encode(std::string_view text, bool addBos,
                              bool parseSpecial) const override {
    std::vector<TokenId> out;
    if (addBos && vocab_.addBos && vocab_.bos >= 0) out.push_back(vocab_.bos);
    std::string mapped;
    for (const Fragment& fr : partition(text, parseSpecial)) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
        continue;
      }
      const std::string_view part = text.substr(fr.begin, fr.end - fr.begin);
      for (const auto& [b, e] : preTokenize(part, split_)) {
        const std::string_view word = part.substr(b, e - b);
        mapped.clear();
        for (char ch : word) mapped += unicode::byteToUtf8(static_cast<uint8_t>(ch));
        if (const auto id = find(mapped)) {
          out.push_back(*id);
        } else {
          encodeWord(word, out);
        }
      }
    }
    return out;
  }

  std::string tokenToPiece(TokenId id, bool special) const override {
    const TokenType t = type(id);
    const std::string& text = vocab_.tokens[id];
    switch (t) {
      case TokenType::Control:
      case TokenType::Unknown:
        return special ? text : std::string();
      case TokenType::UserDefined:
        return text;
      default:
        return unicode::unicodeToBytes(text);
    }
  }

 private:
  struct Merge {
    int32_t priority = 0;  // lower merges first
    TokenId result = -1;
  };
  struct Symbol {
    int32_t prev, next;
    TokenId id;  // -1: a byte with no token
  };
  struct Candidate {
    int32_t priority;
    int32_t left, right;
    TokenId leftId, rightId, result;
  };
  struct CandidateOrder {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.priority > b.priority || (a.priority == b.priority && a.left > b.left);
    }
  };

  static uint64_t pairKey(TokenId l, TokenId r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }

  void encodeWord(std::string_view word, std::vector<TokenId>& out) const {
    std::vector<Symbol> syms(word.size());
    for (size_t i = 0; i < word.size(); ++i) {
      syms[i] = {static_cast<int32_t>(i) - 1, static_cast<int32_t>(i) + 1,
                 byteSymbols_[static_cast<uint8_t>(word[i])]};
    }
    if (syms.empty()) return;
    syms.back().next = -1;
    std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
    auto tryAdd = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0 || syms[left].id < 0 || syms[right].id < 0) return;
      const Merge* m = merges_.find(pairKey(syms[left].id, syms[right].id));
      if (!m) return;
      queue.push({m->priority, left, right, syms[left].id, syms[right].id, m->result});
    };
    for (size_t i = 1; i < syms.size(); ++i) {
      tryAdd(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
    }
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& l = syms[c.left];
      Symbol& r = syms[c.right];
      if (l.id != c.leftId || r.id != c.rightId || l.next != c.right) continue;
      l.id = c.result;
      r.id = -2;  // merged away
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = c.left;
      tryAdd(l.prev, c.left);
      tryAdd(c.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) {
      if (syms[i].id >= 0) {
        out.push_back(syms[i].id);
      } else if (vocab_.unk >= 0) {
        out.push_back(vocab_.unk);
      }
    }
  }

  PreSplit split_;
  std::array<TokenId, 256> byteSymbols_{};
  U64Map<Merge> merges_;
};

}  // namespace

std::unique_ptr<Tokenizer> makeBpeTokenizer(Vocab vocab) {
  return std::make_unique<BpeTokenizer>(std::move(vocab));
}

}  // namespace tern::detail
