// Runs the real `tern` binary (TERN_EXE) as a user would, capturing stdout, stderr and the exit.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace tern::e2e {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh directory under /tmp, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/tern-e2e-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct RunResult {
  int exitCode = -1;    // valid when !signaled
  bool signaled = false;
  int signal = 0;
  std::string out, err;
};

// Starts TERN_EXE with `args` (argv without the program), stdin from stdinPath, stdout and
// stderr into files; returns its pid.
inline pid_t spawnTern(const std::vector<std::string>& args, const std::string& stdinPath,
                       const std::string& outPath, const std::string& errPath) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdinPath.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, outPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> all{TERN_EXE};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, TERN_EXE, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn failed for " TERN_EXE);
  return pid;
}

// argv excludes the program; stdinText is fed on stdin (from a file).
inline RunResult runTern(const std::vector<std::string>& args, const std::string& stdinText = "") {
  TempDir dir;
  const auto outPath = dir / "stdout", errPath = dir / "stderr", inPath = dir / "stdin";
  { std::ofstream(inPath, std::ios::binary) << stdinText; }
  const pid_t pid = spawnTern(args, inPath, outPath, errPath);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) throw std::runtime_error("waitpid failed");
  RunResult r;
  r.signaled = WIFSIGNALED(status);
  if (r.signaled) r.signal = WTERMSIG(status);
  if (WIFEXITED(status)) r.exitCode = WEXITSTATUS(status);
  r.out = slurp(outPath);
  r.err = slurp(errPath);
  return r;
}

inline const std::string kData = TERN_TEST_DATA;
inline const std::string kStories = kData + "/stories260K/stories260K.gguf";
inline const std::string kTinyBitnetF32 = kData + "/tiny-bitnet/model-f32.gguf";

}  // namespace tern::e2e
