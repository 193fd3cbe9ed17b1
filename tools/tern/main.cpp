// tern: ternary LLM inference on CPUs. `tern --help` lists the commands.
#include "tools/tern/commands.hpp"

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  CLI::App app{"tern: lossless ternary LLM inference on CPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tern 0.1.0");
  tern::cli::addRunCommand(app);
  tern::cli::addTokenizeCommand(app);
  tern::cli::addGenCommand(app);
  tern::cli::addConvertCommand(app);
  tern::cli::addBenchCommand(app);
  tern::cli::addPlanCommand(app);
  tern::cli::addWorkerCommand(app);
  tern::cli::addServeCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // usage errors: message on stderr, non-zero exit (0 for --help)
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tern: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
