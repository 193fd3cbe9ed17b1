// placeholder: to be written
#include "tools/tern/commands.hpp"
namespace tern::cli {
void addRunCommand(CLI::App& app) { app.add_subcommand("run", "not yet implemented"); }
}  // namespace tern::cli
