// A progress line on a terminal (or a log): percentage, bytes, MB/s and ETA.
// On a TTY it redraws one line with '\r' at most 10 times a second; otherwise it prints a line at
// every 10% step. finish() always prints a final line.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace tern::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label, std::FILE* out = stderr);
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // done, total: bytes.
  void update(uint64_t done, uint64_t total);
  void finish();  // idempotent

 private:
  std::string line(uint64_t done, uint64_t total, bool final) const;

  using Clock = std::chrono::steady_clock;
  std::string label_;
  std::FILE* out_;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point lastDraw_;
  int lastDecile_ = -1;
  uint64_t done_ = 0, total_ = 0;
  bool drawn_ = false, finished_ = false;
};

}  // namespace tern::cli
