// placeholder: to be written
#include "tools/tern/commands.hpp"
namespace tern::cli {
void addTokenizeCommand(CLI::App& app) { app.add_subcommand("tokenize", "not yet implemented"); }
}  // namespace tern::cli
