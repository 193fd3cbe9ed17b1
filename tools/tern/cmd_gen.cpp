// placeholder: to be written
#include "tools/tern/commands.hpp"
namespace tern::cli {
void addGenCommand(CLI::App& app) { app.add_subcommand("gen", "not yet implemented"); }
}  // namespace tern::cli
