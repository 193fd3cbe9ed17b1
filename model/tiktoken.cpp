// Llama-3 vocab from a tiktoken rank file (`base64(bytes) rank` per line).
#include "model/tokenizer.hpp"
#include "model/unicode.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <stdexcept>

namespace tern {
namespace {

constexpr uint32_t kLlama3BaseTokens = 128000;
constexpr uint32_t kLlama3Vocab = 128256;
constexpr uint64_t kMaxFileBytes = 64ull << 20;

int base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Strict RFC 4648 base64 (padded); nullopt on any malformed input.
std::optional<std::string> decodeBase64(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (s.back() == '=') pad = (s[s.size() - 2] == '=') ? 2 : 1;
  std::string out;
  out.reserve(s.size() / 4 * 3);
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = s[i + k];
      int x;
      if (c == '=' && last && k >= 4 - pad) {
        x = 0;
      } else {
        x = base64Value(c);
        if (x < 0) return std::nullopt;
      }
      v = (v << 6) | static_cast<uint32_t>(x);
    }
    const size_t n = last ? 3 - pad : 3;
    for (size_t k = 0; k < n; ++k) out.push_back(static_cast<char>((v >> (16 - 8 * k)) & 0xFF));
  }
  return out;
}

[[noreturn]] void fail(const std::string& path, size_t line, const std::string& msg) {
  throw std::runtime_error(path + (line ? ":" + std::to_string(line) : std::string()) + ": " +
                           msg);
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot open tiktoken file");
  const std::streamoff size = in.tellg();
  if (size < 0) throw std::runtime_error(path + ": cannot read tiktoken file");
  if (static_cast<uint64_t>(size) > kMaxFileBytes) {
    throw std::runtime_error(path + ": tiktoken file too large (" + std::to_string(size) +
                             " bytes)");
  }
  std::string data(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(data.data(), size)) throw std::runtime_error(path + ": cannot read tiktoken file");
  return data;
}

}  // namespace

Vocab llama3VocabFromTiktoken(const std::string& path, uint32_t nVocab) {
  if (nVocab < kLlama3Vocab) {
    throw std::invalid_argument("llama3VocabFromTiktoken: nVocab " + std::to_string(nVocab) +
                                " < " + std::to_string(kLlama3Vocab));
  }
  if (nVocab > (1u << 20)) {
    throw std::invalid_argument("llama3VocabFromTiktoken: nVocab " + std::to_string(nVocab) +
                                " is implausibly large");
  }
  const std::string data = readFile(path);

  // bytes[rank]
  std::vector<std::string> bytes;
  std::vector<size_t> lineOf;
  std::vector<std::pair<uint32_t, std::string>> entries;
  size_t lineNo = 0;
  for (size_t pos = 0; pos < data.size();) {
    size_t eol = data.find('\n', pos);
    if (eol == std::string::npos) eol = data.size();
    std::string_view line(data.data() + pos, eol - pos);
    pos = eol + 1;
    ++lineNo;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos) fail(path, lineNo, "expected 'base64 rank'");
    const std::string_view b64 = line.substr(0, sp);
    const std::string_view rankText = line.substr(sp + 1);
    auto decoded = decodeBase64(b64);
    if (!decoded) fail(path, lineNo, "invalid base64 '" + std::string(b64.substr(0, 64)) + "'");
    uint32_t rank = 0;
    const auto [end, ec] = std::from_chars(rankText.data(), rankText.data() + rankText.size(), rank);
    if (ec != std::errc() || end != rankText.data() + rankText.size() || rankText.empty()) {
      fail(path, lineNo, "invalid rank '" + std::string(rankText.substr(0, 32)) + "'");
    }
    if (rank >= kLlama3BaseTokens) {
      fail(path, lineNo, "rank " + std::to_string(rank) + " collides with the special tokens (>= " +
                             std::to_string(kLlama3BaseTokens) + ")");
    }
    entries.emplace_back(rank, std::move(*decoded));
    lineOf.push_back(lineNo);
  }
  const size_t n = entries.size();
  if (n == 0) fail(path, 0, "no tokens");
  bytes.assign(n, std::string());
  std::vector<size_t> rankLine(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t rank = entries[i].first;
    if (rank >= n) {
      fail(path, lineOf[i], "rank " + std::to_string(rank) + " leaves a gap (ranks must be 0.." +
                                std::to_string(n - 1) + ")");
    }
    if (rankLine[rank]) {
      fail(path, lineOf[i], "duplicate rank " + std::to_string(rank) + " (also on line " +
                                std::to_string(rankLine[rank]) + ")");
    }
    rankLine[rank] = lineOf[i];
    bytes[rank] = std::move(entries[i].second);
  }
  entries.clear();

  const detail::StringIndex rankOf(bytes);
  for (size_t r = 0; r < n; ++r) {
    if (rankOf.find(bytes[r]) != static_cast<int32_t>(r)) {
      fail(path, rankLine[r], "duplicate token bytes (rank " + std::to_string(r) + ")");
    }
  }

  Vocab v;
  v.model = "gpt2";
  v.pre = "llama-bpe";
  v.tokens.reserve(nVocab);
  v.types.reserve(nVocab);
  for (size_t r = 0; r < n; ++r) {
    v.tokens.push_back(unicode::bytesToUnicode(bytes[r]));
    v.types.push_back(TokenType::Normal);
  }
  for (size_t id = n; id < kLlama3BaseTokens; ++id) {
    v.tokens.push_back("[PAD" + std::to_string(id) + "]");
    v.types.push_back(TokenType::Unused);
  }
  static const char* const kNamed[] = {
      "<|begin_of_text|>",           "<|end_of_text|>",  "<|reserved_special_token_0|>",
      "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
      "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
      "<|eom_id|>",                   "<|eot_id|>",       "<|python_tag|>"};
  for (const char* name : kNamed) {
    v.tokens.emplace_back(name);
    v.types.push_back(TokenType::Control);
  }
  for (uint32_t reserved = 3; v.tokens.size() < nVocab; ++reserved) {
    v.tokens.push_back("<|reserved_special_token_" + std::to_string(reserved) + "|>");
    v.types.push_back(TokenType::Control);
  }
  v.bos = 128000;
  v.eos = 128001;
  v.eot = 128009;
  v.eogIds = {128001, 128009};
  v.addBos = true;
  v.addSpacePrefix = false;

  // Merges: every split of a token into two tokens. Ordered by the merged token's rank, then
  // the left part's rank, merge-rank BPE picks the same pair as tiktoken's lowest-rank-first
  // rule (the tokenizer gives all splits of one token the same priority, leftmost wins).
  struct Split {
    int32_t left, right;
  };
  std::vector<Split> local;
  for (size_t r = 0; r < n; ++r) {
    const std::string_view t = bytes[r];
    if (t.size() < 2) continue;
    local.clear();
    for (size_t k = 1; k < t.size(); ++k) {
      const int32_t l = rankOf.find(t.substr(0, k));
      if (l < 0) continue;
      const int32_t rr = rankOf.find(t.substr(k));
      if (rr < 0) continue;
      local.push_back({l, rr});
    }
    std::sort(local.begin(), local.end(),
              [](const Split& a, const Split& b) { return a.left < b.left; });
    for (const Split& s : local) v.merges.push_back(v.tokens[s.left] + " " + v.tokens[s.right]);
  }
  return v;
}

}  // namespace tern
