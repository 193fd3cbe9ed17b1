// tern convert: rewrite a model's ternary projections into another weight format
// (see convert/convert.hpp).
#include "tools/tern/commands.hpp"
#include "convert/convert.hpp"
#include "tools/tern/progress.hpp"

#include <cstdio>
#include <memory>
#include <string>

namespace tern::cli {
using namespace tern::convert;  // the library this command drives

void addConvertCommand(CLI::App& app) {
  auto opts = std::make_shared<ConvertOptions>();
  auto to = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "rewrite every ternary projection into another format (t2, i2_s, tq2_0, tq1_0, tl3)");
  cmd->add_option("-m,--model", opts->input, "input GGUF file")->required();
  cmd->add_option("-o,--output", opts->output, "output GGUF file")->required();
  cmd->add_option("--to", *to, "target format: t2 | i2_s | tq2_0 | tq1_0 | tl3")->required();
  cmd->callback([opts, to]() {
    opts->to = parseConvertTarget(*to);
    ConvertResult r;
    {
      ProgressBar bar("writing " + opts->output);
      r = convertModel(*opts, [&bar](uint64_t done, uint64_t total) { bar.update(done, total); });
      bar.finish();
    }
    constexpr size_t kMaxWarnings = 8;
    for (size_t i = 0; i < r.warnings.size() && i < kMaxWarnings; ++i)
      std::fprintf(stderr, "tern: warning: %s\n", r.warnings[i].c_str());
    if (r.warnings.size() > kMaxWarnings)
      std::fprintf(stderr, "tern: warning: ... and %zu more like these\n",
                   r.warnings.size() - kMaxWarnings);
    std::printf("converted %u projections to %s (%u lossy), copied %u tensors, %llu bytes -> %s\n",
                r.converted, kernels::weightFormat(opts->to).name, r.lossy, r.copied,
                static_cast<unsigned long long>(r.fileBytes), opts->output.c_str());
  });
}

}  // namespace tern::cli
