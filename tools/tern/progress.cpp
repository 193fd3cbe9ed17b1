#include "tools/tern/progress.hpp"

#include <unistd.h>

namespace tern::cli {

namespace {

std::string megabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string duration(double s) {
  char buf[32];
  if (s < 0 || s > 1e7) return "?";
  auto t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, std::FILE* out)
    : label_(std::move(label)), out_(out), tty_(::isatty(::fileno(out)) != 0),
      start_(Clock::now()), lastDraw_(start_) {}

std::string ProgressBar::line(uint64_t done, uint64_t total, bool final) const {
  const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
  const double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
  const double rate = secs > 0 ? static_cast<double>(done) / secs / 1e6 : 0.0;  // MB/s
  char buf[256];
  if (final) {
    std::snprintf(buf, sizeof buf, "%s: %5.1f%% %s in %.1f s (%.1f MB/s)", label_.c_str(), pct,
                  megabytes(done).c_str(), secs, rate);
  } else {
    const double eta = rate > 0 ? static_cast<double>(total - done) / (rate * 1e6) : -1.0;
    std::snprintf(buf, sizeof buf, "%s: %5.1f%% %s / %s  %.1f MB/s  ETA %s", label_.c_str(), pct,
                  megabytes(done).c_str(), megabytes(total).c_str(), rate, duration(eta).c_str());
  }
  return buf;
}

void ProgressBar::update(uint64_t done, uint64_t total) {
  if (finished_) return;
  done_ = done;
  total_ = total;
  if (tty_) {
    auto now = Clock::now();
    if (drawn_ && now - lastDraw_ < std::chrono::milliseconds(100)) return;
    lastDraw_ = now;
    std::fprintf(out_, "\r%s\x1b[K", line(done, total, false).c_str());
    std::fflush(out_);
    drawn_ = true;
  } else {
    int decile = total ? static_cast<int>(done * 10 / total) : 10;
    if (decile <= lastDecile_ || decile >= 10) return;
    lastDecile_ = decile;
    std::fprintf(out_, "%s\n", line(done, total, false).c_str());
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  std::fprintf(out_, "%s%s\n", tty_ ? "\r\x1b[K" : "", line(done_, total_, true).c_str());
  std::fflush(out_);
}

}  // namespace tern::cli
