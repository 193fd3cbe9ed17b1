// Tokenizers built from GGUF metadata (`tokenizer.ggml.*`):
//  - "llama": SentencePiece-style, merges by piece score, byte fallback (<0xAB> pieces).
//  - "gpt2":  byte-level BPE with merges; the pre-tokenizer is chosen by `tokenizer.ggml.pre`
//             ("llama-bpe" = Llama-3 split regex, "gpt-2"/"default" = GPT-2 split regex).
// Encoding is linear in the input length (pre-tokenised words are bounded; merges use a heap).
#pragma once

#include "model/gguf.hpp"
#include "model/token_index.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern {

using TokenId = int32_t;

// llama.cpp token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

struct Vocab {
  std::string model;  // "llama" | "gpt2"
  std::string pre;    // pre-tokenizer name for gpt2 ("llama-bpe", "gpt-2", "default")
  std::vector<std::string> tokens;  // as stored (gpt2: byte-to-unicode mapped text)
  std::vector<float> scores;        // may be empty for gpt2
  std::vector<TokenType> types;     // may be empty: then all Normal
  std::vector<std::string> merges;  // gpt2: "left right" pairs, highest priority first
  TokenId bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
  bool addBos = true;
  bool addSpacePrefix = true;  // llama: prepend "▁" to the text
  std::vector<TokenId> eogIds;  // end-of-generation ids (eos, eot, ...)

  // Reads tokenizer.ggml.*; throws gguf::FormatError naming the key on missing/inconsistent data.
  static Vocab fromGguf(const gguf::File& f);
  // Writes tokenizer.ggml.* keys.
  void toGguf(gguf::Writer& w) const;
};

class Tokenizer {
 public:
  static std::unique_ptr<Tokenizer> create(Vocab vocab);
  virtual ~Tokenizer() = default;

  // addBos: prepend BOS if the vocab says so (vocab().addBos) and this flag is set.
  // parseSpecial: recognise special/control token texts (e.g. "<|eot_id|>") in the input.
  virtual std::vector<TokenId> encode(std::string_view text, bool addBos,
                                      bool parseSpecial = false) const = 0;
  // Bytes of one token as it appears in text (byte tokens give their raw byte; control tokens
  // give "" unless `special`).
  virtual std::string tokenToPiece(TokenId id, bool special = false) const = 0;
  // Concatenated pieces; for "llama" the leading space added by the prefix is removed.
  std::string decode(const std::vector<TokenId>& ids, bool special = false) const;

  const Vocab& vocab() const { return vocab_; }
  uint32_t size() const { return static_cast<uint32_t>(vocab_.tokens.size()); }
  bool isEog(TokenId id) const;
  std::optional<TokenId> find(std::string_view tokenText) const;
  TokenType type(TokenId id) const;  // Normal when the vocab has no types

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

 protected:
  explicit Tokenizer(Vocab v) : vocab_(std::move(v)) { buildIndex(); }

  // A piece of the input: raw text [begin, end) bytes, or a special token found in it.
  struct Fragment {
    TokenId token = -1;  // >= 0: a special token
    uint32_t begin = 0, end = 0;
  };
  // Splits `text` around the texts of special tokens (Control, UserDefined and Unknown types
  // when parseSpecial; UserDefined only otherwise, as llama.cpp does), longest first.
  std::vector<Fragment> partition(std::string_view text, bool parseSpecial) const;
  // Throws std::out_of_range for an id outside the vocab.
  void checkId(TokenId id) const;

  Vocab vocab_;

 private:
  void buildIndex();
  detail::StringIndex index_;  // over vocab_.tokens
  std::vector<TokenId> specialsAll_;   // longest text first
  std::vector<TokenId> specialsUser_;  // UserDefined only, longest text first
};

// Builds the Llama-3 vocab (gpt2 model, pre "llama-bpe", 128000 BPE tokens + 256 specials
// 128000..128255, merges derived from the ranks) from a tiktoken file (`base64 rank` per line,
// e.g. tests/data/llama3-tokenizer/tokenizer.model). nVocab >= 128256 pads with reserved
// specials up to nVocab. Throws std::runtime_error naming the file on bad input.
Vocab llama3VocabFromTiktoken(const std::string& path, uint32_t nVocab = 128256);

}  // namespace tern
