// tern gen: write a synthetic ternary GGUF for a named layout (see convert/generate.hpp).
#include "tools/tern/commands.hpp"
#include "convert/generate.hpp"
#include "tools/tern/progress.hpp"

#include <cstdio>
#include <memory>
#include <stdexcept>

namespace tern::cli {
using namespace tern::convert;  // the library this command drives

namespace {

void printLayouts() {
  std::printf("%-15s %-13s %6s %6s %6s %5s %5s %5s %7s %9s %9s\n", "name", "arch", "hidden", "ffn",
              "layers", "heads", "kv", "hdim", "vocab", "params", "size");
  for (const Layout& l : allLayouts()) {
    LayoutSize s = layoutSize(l);
    std::printf("%-15s %-13s %6u %6u %6u %5u %5u %5u %7u %9s %9s\n", l.name.c_str(),
                archName(l.arch), l.nEmbd, l.nFf, l.nLayer, l.nHead, l.nHeadKv, l.headDim,
                l.nVocab, formatCount(s.totalParams).c_str(),
                formatBytes(s.fileBytesEstimate).c_str());
  }
}

void printSummary(const GenResult& r, const GenOptions& o) {
  const Layout& l = r.layout;
  std::printf("layout   %s (%s)\n", l.name.c_str(), l.description.c_str());
  std::printf("arch     %s, hidden %u, ffn %u, layers %u, heads %u (kv %u) x %u, vocab %u, ctx %u\n",
              archName(l.arch), l.nEmbd, l.nFf, l.nLayer, l.nHead, l.nHeadKv, l.headDim, l.nVocab,
              l.nCtx);
  std::printf("params   %s (%s ternary)\n", formatCount(r.size.totalParams).c_str(),
              formatCount(r.size.ternaryParams).c_str());
  std::printf("size     %s (%llu bytes)\n", formatBytes(r.fileBytes).c_str(),
              static_cast<unsigned long long>(r.fileBytes));
  std::printf("seed     %llu, zero fraction %.3f\n", static_cast<unsigned long long>(o.seed),
              o.zeroFraction);
}

}  // namespace

void addGenCommand(CLI::App& app) {
  auto opts = std::make_shared<GenOptions>();
  auto layers = std::make_shared<uint32_t>(0);
  auto list = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("gen", "write a synthetic ternary GGUF for a named layout");
  cmd->add_option("--layout", opts->layout, "layout name (see --list)");
  cmd->add_option("-o,--output", opts->output, "output GGUF file");
  cmd->add_option("--seed", opts->seed, "random seed (same seed: byte-identical file)");
  CLI::Option* layersOpt = cmd->add_option("--layers", *layers, "override the number of layers");
  cmd->add_option("--zero-frac", opts->zeroFraction, "fraction of zero weights, in [0, 0.99]");
  cmd->add_flag("--dry-run", opts->dryRun, "print the layout, parameter count and size only");
  cmd->add_flag("--list", *list, "list the layouts");
  cmd->add_option("--data-dir", opts->tokenizerDir, "folder with the tokenizer data");
  cmd->callback([opts, layers, list, layersOpt]() {
    if (*list) {
      printLayouts();
      return;
    }
    if (opts->layout.empty())
      throw std::invalid_argument("--layout is required (one of: " + layoutNames() + ")");
    if (!findLayout(opts->layout))
      throw std::invalid_argument("unknown layout '" + opts->layout + "' (valid: " +
                                  layoutNames() + ")");
    if (!opts->dryRun && opts->output.empty())
      throw std::invalid_argument("-o FILE is required (or --dry-run)");
    if (layersOpt->count() > 0) opts->nLayer = *layers;
    if (opts->dryRun) {
      printSummary(generateModel(*opts), *opts);
      return;
    }
    ProgressBar bar("writing " + opts->output);
    GenResult r = generateModel(*opts, [&bar](uint64_t done, uint64_t total) { bar.update(done, total); });
    bar.finish();
    printSummary(r, *opts);
  });
}

}  // namespace tern::cli
