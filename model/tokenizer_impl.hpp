// Internal to the tokenizer sources: concrete tokenizer factories and shared helpers.
#pragma once

#include "model/tokenizer.hpp"

#include <string_view>

namespace tern::detail {

// Pre-tokenizer split rules for byte-level BPE.
enum class PreSplit { Gpt2, Llama3 };
// nullopt for an unsupported `tokenizer.ggml.pre` name.
std::optional<PreSplit> preSplitFor(std::string_view pre);

// Splits `text` (UTF-8) into pre-tokenizer words; returns [begin, end) byte offsets.
std::vector<std::pair<uint32_t, uint32_t>> preTokenize(std::string_view text, PreSplit split);

std::unique_ptr<Tokenizer> makeSpmTokenizer(Vocab vocab);
std::unique_ptr<Tokenizer> makeBpeTokenizer(Vocab vocab);

}  // namespace tern::detail
