// tern tokenize: print the tokens of a prompt, like llama.cpp's llama-tokenize.
// Needs only the tokenizer metadata, so vocab-only GGUF files work too.
#include "tools/tern/commands.hpp"

#include "model/gguf.hpp"
#include "model/tokenizer.hpp"

#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tern::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  std::string promptFile;
  bool ids = false;
  bool noBos = false;
  bool parseSpecial = false;
};

std::string readPromptFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open prompt file");
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw std::runtime_error(path + ": cannot read prompt file");
  return text;
}

void runTokenize(const TokenizeOptions& o) {
  const std::string text = o.promptFile.empty() ? o.prompt : readPromptFile(o.promptFile);
  const std::shared_ptr<const gguf::File> file = gguf::File::open(o.model);
  const std::unique_ptr<Tokenizer> tok = Tokenizer::create(Vocab::fromGguf(*file));
  const std::vector<TokenId> ids = tok->encode(text, !o.noBos, o.parseSpecial);
  if (o.ids) {
    std::string line = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) line += ", ";
      line += std::to_string(ids[i]);
    }
    line += "]\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    return;
  }
  for (TokenId id : ids) {
    const std::string piece = tok->tokenToPiece(id, true);
    std::printf("%6d -> '", id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::printf("'\n");
  }
}

}  // namespace

void addTokenizeCommand(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "print the tokens of a prompt (like llama-tokenize)");
  cmd->add_option("-m,--model", opts->model, "GGUF file (a vocab-only file is enough)")->required();
  auto* prompt = cmd->add_option("-p,--prompt", opts->prompt, "text to tokenize");
  auto* file = cmd->add_option("-f,--file", opts->promptFile, "read the text from a file");
  prompt->excludes(file);
  cmd->add_flag("--ids", opts->ids, "print only the ids, as [1, 2, 3]");
  cmd->add_flag("--no-bos", opts->noBos, "do not add BOS even if the vocab asks for it");
  cmd->add_flag("--parse-special", opts->parseSpecial,
                "turn special token texts (e.g. <|eot_id|>) into their ids");
  cmd->callback([opts, prompt, file] {
    if (prompt->count() == 0 && file->count() == 0) {
      throw CLI::RequiredError("one of -p/--prompt or -f/--file");
    }
    runTokenize(*opts);
  });
}

}  // namespace tern::cli
