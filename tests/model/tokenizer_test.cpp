// Tokenizers: llama.cpp's tokenizer test vectors (Llama-2 SentencePiece, Llama-3 BPE), the
// stories260K tokenizer against llama2.c / llama.cpp outputs, GGUF round trips, bad input, and
// a linear-time check.
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace tern;

namespace {

const std::string kData = TERN_TEST_DATA;
const std::string kVocabDir = kData + "/llama.cpp-vocab";

std::string readText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

fs::path tempDir() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("tern_tokenizer_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string writeTemp(const std::string& name, const std::string& content) {
  const std::string path = (tempDir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  return path;
}

struct VocabCase {
  std::string text;
  std::vector<TokenId> ids;
};

// llama.cpp's test format: `.inp` = strings each followed by "\n__ggml_vocab_test__\n",
// `.out` = one line of ids per string.
std::vector<VocabCase> loadCases(const std::string& base) {
  const std::string inp = readText(base + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t hit = inp.find(sep, pos);
    if (hit == std::string::npos) {
      cases.push_back({inp.substr(pos), {}});
      break;
    }
    cases.push_back({inp.substr(pos, hit - pos), {}});
    pos = hit + sep.size();
  }
  std::istringstream out(readText(base + ".out"));
  std::string line;
  size_t i = 0;
  for (; std::getline(out, line); ++i) {
    REQUIRE(i < cases.size());
    std::istringstream ls(line);
    TokenId id;
    while (ls >> id) cases[i].ids.push_back(id);
  }
  REQUIRE(i == cases.size());
  return cases;
}

std::vector<TokenId> parseIds(const std::string& s) {
  std::istringstream in(s);
  std::vector<TokenId> ids;
  TokenId id;
  while (in >> id) ids.push_back(id);
  return ids;
}

const Tokenizer& stories() {
  static std::unique_ptr<Tokenizer> tok = [] {
    auto f = gguf::File::open(kData + "/stories260K/stories260K.gguf");
    return Tokenizer::create(Vocab::fromGguf(*f));
  }();
  return *tok;
}

const Tokenizer& llamaSpm() {
  static std::unique_ptr<Tokenizer> tok = [] {
    auto f = gguf::File::open(kVocabDir + "/ggml-vocab-llama-spm.gguf");
    return Tokenizer::create(Vocab::fromGguf(*f));
  }();
  return *tok;
}

// The Llama-3 tokenizer through the real path: tiktoken -> Vocab -> vocab-only GGUF -> Vocab.
const Tokenizer& llama3() {
  static std::unique_ptr<Tokenizer> tok = [] {
    const Vocab built = llama3VocabFromTiktoken(kData + "/llama3-tokenizer/tokenizer.model");
    gguf::Writer w;
    w.setString("general.architecture", "llama");
    built.toGguf(w);
    const std::string path = (tempDir() / "llama3-vocab.gguf").string();
    w.write(path);
    auto f = gguf::File::open(path);
    return Tokenizer::create(Vocab::fromGguf(*f));
  }();
  return *tok;
}

std::string hexDump(const std::string& s) {
  std::string out;
  char buf[4];
  for (unsigned char c : s) {
    std::snprintf(buf, sizeof buf, "%02x ", c);
    out += buf;
  }
  return out;
}

void checkCases(const Tokenizer& tok, const std::string& base) {
  const std::vector<VocabCase> cases = loadCases(base);
  REQUIRE(cases.size() == 46);
  for (const VocabCase& c : cases) {
    INFO("input bytes: " << hexDump(c.text));
    CHECK(tok.encode(c.text, false, false) == c.ids);
    CHECK(tok.decode(c.ids) == c.text);
  }
}

}  // namespace

TEST_CASE("unicode: classes and the GPT-2 byte table") {
  using namespace tern::unicode;
  CHECK(isLetter('a'));
  CHECK(isLetter(0xE9));     // é
  CHECK(isLetter(0x4E2D));   // 中
  CHECK_FALSE(isLetter('1'));
  CHECK(isNumber('7'));
  CHECK(isNumber(0xBD));     // ½ (No)
  CHECK(isNumber(0x0661));   // Arabic-Indic one (Nd)
  CHECK(isSpace('\t'));
  CHECK(isSpace(0x3000));    // ideographic space
  CHECK(isSpace(0x85));
  CHECK_FALSE(isSpace(0x1C));  // not White_Space (Python's isspace says yes)
  CHECK_FALSE(isSpace(0x200B));
  CHECK(byteToCodepoint(' ') == 0x120);   // "Ġ"
  CHECK(byteToCodepoint('\n') == 0x10A);  // "Ċ"
  CHECK(byteToCodepoint('A') == 'A');
  CHECK(byteToCodepoint(0xAD) == 0x143);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  CHECK(unicodeToBytes(bytesToUnicode(all)) == all);
  // Malformed UTF-8 decodes byte by byte and keeps every byte.
  const auto d = decodeUtf8("a\xC3(\xE2\x82\xAC\xF0\x9F");
  REQUIRE(d.size() == 6);
  CHECK(d[1].cp == kInvalidCodepoint);
  CHECK(d[3].cp == 0x20AC);
  CHECK(d[3].length == 3);
}

TEST_CASE("tokenizer: GPT-2 and Llama-3 pre-tokenizer splits") {
  // Expected words worked out by hand from the two split regexes.
  auto words = [](std::string_view text, detail::PreSplit split) {
    std::vector<std::string> out;
    for (const auto& [b, e] : detail::preTokenize(text, split)) {
      out.emplace_back(text.substr(b, e - b));
    }
    return out;
  };
  using V = std::vector<std::string>;
  const std::string text = "Hello world's  123 !!\n\n x";
  CHECK(words(text, detail::PreSplit::Gpt2) ==
        V{"Hello", " world", "'s", " ", " 123", " !!", "\n\n", " x"});
  CHECK(words(text, detail::PreSplit::Llama3) ==
        V{"Hello", " world", "'s", " ", " ", "123", " !!\n\n", " x"});
  CHECK(words("\t\tHi", detail::PreSplit::Gpt2) == V{"\t", "\t", "Hi"});
  CHECK(words("\t\tHi", detail::PreSplit::Llama3) == V{"\t", "\tHi"});
  CHECK(words("'RE 33333", detail::PreSplit::Gpt2) == V{"'", "RE", " 33333"});
  CHECK(words("'RE 33333", detail::PreSplit::Llama3) == V{"'RE", " ", "333", "33"});
  CHECK(words("a  \n  b  ", detail::PreSplit::Llama3) == V{"a", "  \n", " ", " b", "  "});
  CHECK(words("", detail::PreSplit::Llama3).empty());
  // Malformed UTF-8 stays in the words byte for byte.
  CHECK(words("x\xFF\xFEy", detail::PreSplit::Llama3) == V{"x", "\xFF\xFE", "y"});
  CHECK(detail::preSplitFor("llama-bpe") == detail::PreSplit::Llama3);
  CHECK(detail::preSplitFor("default") == detail::PreSplit::Gpt2);
  CHECK(!detail::preSplitFor("qwen2"));
}

TEST_CASE("tokenizer: llama-spm matches llama.cpp's test vectors") {
  checkCases(llamaSpm(), kVocabDir + "/ggml-vocab-llama-spm.gguf");
}

TEST_CASE("tokenizer: llama-bpe (tiktoken -> GGUF -> vocab) matches llama.cpp's test vectors") {
  checkCases(llama3(), kVocabDir + "/ggml-vocab-llama-bpe.gguf");
}

TEST_CASE("tokenizer: Llama-3 vocab layout, BOS and special tokens") {
  const Tokenizer& tok = llama3();
  const Vocab& v = tok.vocab();
  CHECK(tok.size() == 128256);
  CHECK(v.model == "gpt2");
  CHECK(v.pre == "llama-bpe");
  CHECK(v.bos == 128000);
  CHECK(v.eos == 128001);
  CHECK(v.eot == 128009);
  CHECK(v.tokens[128000] == "<|begin_of_text|>");
  CHECK(v.tokens[128006] == "<|start_header_id|>");
  CHECK(v.tokens[128009] == "<|eot_id|>");
  CHECK(v.tokens[128011] == "<|reserved_special_token_3|>");
  CHECK(v.tokens[128255] == "<|reserved_special_token_247|>");
  CHECK(tok.isEog(128001));
  CHECK(tok.isEog(128009));
  CHECK_FALSE(tok.isEog(128000));
  CHECK(tok.find("<|eot_id|>") == 128009);

  CHECK(tok.encode("Hello world", true) == std::vector<TokenId>{128000, 9906, 1917});
  CHECK(tok.encode("Hello world", false) == std::vector<TokenId>{9906, 1917});
  CHECK(tok.encode("", true) == std::vector<TokenId>{128000});
  CHECK(tok.encode("Hello<|eot_id|>", false, true) == std::vector<TokenId>{9906, 128009});
  const auto plain = tok.encode("Hello<|eot_id|>", false, false);
  CHECK(std::find(plain.begin(), plain.end(), 128009) == plain.end());
  CHECK(tok.decode(plain) == "Hello<|eot_id|>");
  // Control tokens decode to "" unless asked for.
  CHECK(tok.decode({128000, 9906, 128009}) == "Hello");
  CHECK(tok.decode({128000, 9906, 128009}, true) == "<|begin_of_text|>Hello<|eot_id|>");
  CHECK(tok.tokenToPiece(1917) == " world");
  CHECK_THROWS_AS(tok.tokenToPiece(128256), std::out_of_range);

  const Vocab big = llama3VocabFromTiktoken(kData + "/llama3-tokenizer/tokenizer.model", 131072);
  CHECK(big.tokens.size() == 131072);
  CHECK(big.tokens[131071] == "<|reserved_special_token_" + std::to_string(131071 - 128008) + "|>");
}

TEST_CASE("tokenizer: stories260K (SentencePiece, 512 tokens, byte fallback)") {
  const Tokenizer& tok = stories();
  CHECK(tok.size() == 512);
  CHECK(tok.vocab().model == "llama");
  // tests/data/tiny-bitnet/prompt_ids.txt: llama.cpp and bitnet.cpp, add_special=true.
  const std::string prompt = readText(kData + "/tiny-bitnet/prompt_ids.txt");
  const size_t at = prompt.find("ids:");
  REQUIRE(at != std::string::npos);
  const std::vector<TokenId> expected = parseIds(prompt.substr(at + 4));
  REQUIRE(expected.size() == 10);
  CHECK(tok.encode("Once upon a time, there was a little", true) == expected);
  CHECK(tok.encode("Once upon a time, there was a little", false) ==
        std::vector<TokenId>(expected.begin() + 1, expected.end()));
  CHECK(tok.decode(expected) == "Once upon a time, there was a little");

  // llama2.c greedy run: BOS then 200 generated tokens; run.c prints each piece (dropping the
  // space after BOS) and a final newline.
  std::istringstream in(readText(kData + "/stories260K/greedy_tokens_200.txt"));
  std::vector<TokenId> ids;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    ids.push_back(std::stoi(line));
  }
  REQUIRE(ids.size() == 201);
  CHECK(tok.decode(ids) + "\n" == readText(kData + "/stories260K/expected_greedy_200.txt"));

  // Byte fallback: characters outside the 512-token vocab become <0xAB> tokens (ids 3 + byte in
  // a SentencePiece vocab) and decode back.
  const std::string exotic = "a\xE4\xB8\xAD\xF0\x9F\x98\x80";  // "a中😀"
  std::vector<TokenId> exIds = {*tok.find("\xE2\x96\x81" "a")};
  for (unsigned b : {0xE4u, 0xB8u, 0xADu, 0xF0u, 0x9Fu, 0x98u, 0x80u}) {
    exIds.push_back(static_cast<TokenId>(3 + b));
  }
  CHECK(tok.encode(exotic, false) == exIds);
  CHECK(tok.type(exIds[1]) == TokenType::Byte);
  CHECK(tok.decode(exIds) == exotic);
  CHECK(tok.decode({1}) == "");
  CHECK(tok.decode({1}, true) == tok.vocab().tokens[1]);
}

TEST_CASE("tokenizer: special-token parsing in SentencePiece") {
  const Tokenizer& tok = llamaSpm();
  // "<s>" is BOS (Control): an id with parseSpecial, plain text otherwise.
  const auto withSpecial = tok.encode("<s>Hi", false, true);
  REQUIRE(!withSpecial.empty());
  CHECK(withSpecial[0] == 1);
  CHECK(withSpecial == std::vector<TokenId>{1, 6324});  // "▁Hi": prefix added after a special
  const auto plain = tok.encode("<s>Hi", false, false);
  CHECK(std::find(plain.begin(), plain.end(), 1) == plain.end());
  CHECK(tok.decode(plain) == "<s>Hi");
}

TEST_CASE("tokenizer: vocab GGUF round trip keeps every field") {
  Vocab v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81" "a", "b", "<0x41>"};
  v.scores = {0, 0, 0, -1.5f, -2.0f, 0};
  v.types = {TokenType::Unknown, TokenType::Control, TokenType::Control, TokenType::Normal,
             TokenType::Normal, TokenType::Byte};
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  v.pad = 0;
  v.addBos = false;
  v.addSpacePrefix = false;
  gguf::Writer w;
  v.toGguf(w);
  const std::string path = (tempDir() / "roundtrip.gguf").string();
  w.write(path);
  const Vocab r = Vocab::fromGguf(*gguf::File::open(path));
  CHECK(r.model == v.model);
  CHECK(r.tokens == v.tokens);
  CHECK(r.scores == v.scores);
  CHECK(r.types == v.types);
  CHECK(r.bos == 1);
  CHECK(r.eos == 2);
  CHECK(r.unk == 0);
  CHECK(r.pad == 0);
  CHECK(r.eot == -1);
  CHECK(r.addBos == false);
  CHECK(r.addSpacePrefix == false);
  CHECK(r.eogIds == std::vector<TokenId>{2});
}

TEST_CASE("tokenizer: bad GGUF vocab metadata gives a clear error") {
  auto expectError = [](const std::string& name, const std::function<void(gguf::Writer&)>& fill,
                        const std::string& needle) {
    gguf::Writer w;
    fill(w);
    const std::string path = (tempDir() / name).string();
    w.write(path);
    auto f = gguf::File::open(path);
    try {
      (void)Vocab::fromGguf(*f);
      FAIL("no error for " << name);
    } catch (const gguf::FormatError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  expectError("no-model.gguf", [](gguf::Writer& w) {
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b"});
  }, "tokenizer.ggml.model");
  expectError("bad-model.gguf", [](gguf::Writer& w) {
    w.setString("tokenizer.ggml.model", "bert");
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b"});
  }, "bert");
  expectError("scores-len.gguf", [](gguf::Writer& w) {
    w.setString("tokenizer.ggml.model", "llama");
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
    w.setF32Array("tokenizer.ggml.scores", {0.f, 1.f});
  }, "tokenizer.ggml.scores");
  expectError("types-len.gguf", [](gguf::Writer& w) {
    w.setString("tokenizer.ggml.model", "gpt2");
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
    w.setI32Array("tokenizer.ggml.token_type", {1, 1});
    w.setStringArray("tokenizer.ggml.merges", {"a b"});
  }, "tokenizer.ggml.token_type");
  expectError("bos-range.gguf", [](gguf::Writer& w) {
    w.setString("tokenizer.ggml.model", "gpt2");
    w.setStringArray("tokenizer.ggml.tokens", {"a", "b"});
    w.setStringArray("tokenizer.ggml.merges", {"a b"});
    w.setU32("tokenizer.ggml.bos_token_id", 2);
  }, "tokenizer.ggml.bos_token_id");
  expectError("tokens-type.gguf", [](gguf::Writer& w) {
    w.setString("tokenizer.ggml.model", "gpt2");
    w.setF32Array("tokenizer.ggml.tokens", {1.f});
  }, "tokenizer.ggml.tokens");

  Vocab unsupported;
  unsupported.model = "gpt2";
  unsupported.pre = "qwen2";
  unsupported.tokens = {"a"};
  CHECK_THROWS_AS(Tokenizer::create(unsupported), std::invalid_argument);
}

TEST_CASE("tokenizer: bad tiktoken files name the file and line") {
  auto expectError = [](const std::string& name, const std::string& content,
                        const std::string& needle) {
    const std::string path = writeTemp(name, content);
    try {
      (void)llama3VocabFromTiktoken(path);
      FAIL("no error for " << name);
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(path) != std::string::npos);
      CHECK(what.find(needle) != std::string::npos);
    }
  };
  expectError("b64.tiktoken", "IQ== 0\nI*== 1\n", ":2: invalid base64");
  expectError("rank.tiktoken", "IQ== 0\nIg== x\n", ":2: invalid rank");
  expectError("gap.tiktoken", "IQ== 0\nIg== 2\n", ":2: rank 2 leaves a gap");
  expectError("dup.tiktoken", "IQ== 0\nIg== 0\n", "duplicate rank 0");
  expectError("dupbytes.tiktoken", "IQ== 0\nIQ== 1\n", "duplicate token bytes");
  expectError("nospace.tiktoken", "IQ==0\n", ":1: expected");
  expectError("empty.tiktoken", "", "no tokens");
  CHECK_THROWS_AS(llama3VocabFromTiktoken((tempDir() / "missing.tiktoken").string()),
                  std::runtime_error);
}

TEST_CASE("tokenizer: merges from tiktoken ranks reproduce rank-order BPE") {
  // Bytes a, b, c, then "ab" (3), "bc" (4), "abc" (5), "cab" (6). Rank BPE on "abcab":
  // pairs ab(3) bc(4) ca(-) ab(3): merge leftmost ab -> [ab c a b]; then ab(3) at the end ->
  // [ab c ab]; then abc? "ab"+"c" = abc(5) -> [abc ab]; "abcab" not a token: done.
  const std::string path = writeTemp("tiny.tiktoken",
                                     "YQ== 0\nYg== 1\nYw== 2\nYWI= 3\nYmM= 4\nYWJj 5\nY2Fi 6\n");
  const Vocab v = llama3VocabFromTiktoken(path);
  CHECK(v.tokens[3] == "ab");
  CHECK(v.tokens[7] == "[PAD7]");
  CHECK(v.merges == std::vector<std::string>{"a b", "b c", "a bc", "ab c", "c ab"});
  auto tok = Tokenizer::create(v);
  CHECK(tok->encode("abcab", false) == std::vector<TokenId>{5, 3});
  CHECK(tok->encode("cab", false) == std::vector<TokenId>{6});
  CHECK(tok->decode({5, 3}) == "abcab");
}

TEST_CASE("tokenizer: encoding time grows linearly with the input") {
  // Deterministic pseudo-random words (LCG), with and without spaces.
  auto makeText = [](size_t n, bool spaces) {
    std::string s;
    s.reserve(n);
    uint32_t x = 12345;
    while (s.size() < n) {
      x = x * 1664525u + 1013904223u;
      const uint32_t r = (x >> 16) % 32;
      if (spaces && r < 5) {
        s.push_back(' ');
      } else if (r < 28) {
        s.push_back(static_cast<char>('a' + r % 26));
      } else {
        s.push_back(static_cast<char>('0' + r % 10));
      }
    }
    return s;
  };
  auto seconds = [](const Tokenizer& tok, const std::string& text) {
    double best = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto ids = tok.encode(text, false);
      const auto t1 = std::chrono::steady_clock::now();
      CHECK(!ids.empty());
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    return best;
  };
  const size_t n = 32 << 10;
  for (const Tokenizer* tok : {&llama3(), &llamaSpm()}) {
    for (bool spaces : {true, false}) {
      const std::string small = makeText(n, spaces), large = makeText(8 * n, spaces);
      const double ts = seconds(*tok, small), tl = seconds(*tok, large);
      INFO(tok->vocab().model << " spaces=" << spaces << ": " << ts << " s vs " << tl << " s");
      CHECK(tl < 24 * ts + 0.005);  // quadratic would be 64x
      CHECK(tl < 1.0);
    }
  }
}
