// Subcommands of the `tern` binary. Each add*Command registers a CLI11 subcommand on `app`
// whose callback does the work; errors are thrown (std::exception) and reported by main().
#pragma once

#include <CLI/CLI.hpp>

namespace tern::cli {

void addRunCommand(CLI::App& app);       // cmd_run.cpp: tern run
void addTokenizeCommand(CLI::App& app);  // cmd_tokenize.cpp: tern tokenize
void addGenCommand(CLI::App& app);       // cmd_gen.cpp: tern gen
void addConvertCommand(CLI::App& app);   // cmd_convert.cpp: tern convert
void addBenchCommand(CLI::App& app);     // cmd_bench.cpp: tern bench
void addPlanCommand(CLI::App& app);      // cmd_plan.cpp: tern plan
void addWorkerCommand(CLI::App& app);    // cmd_worker.cpp: tern worker
void addServeCommand(CLI::App& app);     // cmd_serve.cpp: tern serve

}  // namespace tern::cli
