// libFuzzer target: both tokenizers over arbitrary input. The first byte picks the tokenizer
// (SentencePiece: stories260K's 512-piece vocab or llama.cpp's 32000-piece Llama-2 vocab;
// byte-level BPE: the Llama-3 vocab from its tiktoken file), the mode and the flags; the rest
// is either text to encode (any bytes, invalid UTF-8 included) or little-endian int32 ids to
// decode (ids outside the vocab included). Encoding must not throw (but std::length_error over
// 4 GiB); decoding may throw only std::out_of_range, for an id outside the vocab. Every id an
// encode returns must be in the vocab and decode without throwing, and well-formed UTF-8
// encoded without special-token parsing must decode back to itself (both are lossless).
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using namespace tern;

namespace {

const std::string kData = TERN_DATA_DIR;

std::unique_ptr<Tokenizer> fromGguf(const std::string& rel) {
  auto f = gguf::File::open(kData + "/" + rel);
  return Tokenizer::create(Vocab::fromGguf(*f));
}

// Loaded once per process, each on first use.
const Tokenizer& tokenizer(unsigned which) {
  static std::unique_ptr<Tokenizer> t[3];
  if (!t[which]) {
    switch (which) {
      case 0: t[0] = fromGguf("stories260K/stories260K.gguf"); break;
      case 1: t[1] = fromGguf("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"); break;
      default:
        t[2] = Tokenizer::create(llama3VocabFromTiktoken(kData + "/llama3-tokenizer/tokenizer.model"));
    }
  }
  return *t[which];
}

// Well-formed UTF-8 (no overlongs, surrogates or code points over U+10FFFF).
bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = uint8_t(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
    else return false;
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto d = uint8_t(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t ctl = data[0];
  const Tokenizer& tok = tokenizer((ctl & 3) % 3);
  const bool decode = ctl & 4, flagA = ctl & 8, flagB = ctl & 16;
  const uint8_t* rest = data + 1;
  const size_t n = size - 1;
  if (!decode) {
    const std::string_view text(reinterpret_cast<const char*>(rest), n);
    const std::vector<TokenId> ids = tok.encode(text, flagA, flagB);
    for (TokenId id : ids) {
      if (id < 0 || uint32_t(id) >= tok.size()) {
        std::fprintf(stderr, "encode returned id %d outside the vocab of %u\n", id, tok.size());
        std::abort();
      }
    }
    (void)tok.decode(ids, true);
    const std::string back = tok.decode(ids, false);
    // Lossless: well-formed UTF-8 text without special tokens parsed comes back as it was
    // (SentencePiece maps ' ' to U+2581, so text holding U+2581 itself is exempt there).
    if (!flagB && validUtf8(text) &&
        (tok.vocab().model == "gpt2" || text.find("\xe2\x96\x81") == std::string_view::npos) &&
        back != text) {
      std::fprintf(stderr, "decode(encode(text)) differs from the text (%zu bytes vs %zu)\n",
                   back.size(), text.size());
      std::abort();
    }
    return 0;
  }
  std::vector<TokenId> ids(n / 4);
  if (!ids.empty()) std::memcpy(ids.data(), rest, ids.size() * 4);
  // Mostly ids inside the vocab (the interesting case), sometimes as given.
  if (!(ctl & 32)) {
    for (TokenId& id : ids) id = TokenId(uint32_t(id) % tok.size());
  }
  try {
    (void)tok.decode(ids, flagA);
  } catch (const std::out_of_range&) {
  }
  for (TokenId id : ids) {
    try {
      (void)tok.tokenToPiece(id, flagB);
      (void)tok.isEog(id);
      (void)tok.type(id);
    } catch (const std::out_of_range&) {
    }
  }
  return 0;
}
