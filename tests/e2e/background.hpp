// A `tern` process running in the background (a worker, or a coordinator that lingers), with its
// stdout and stderr in files that the test polls; stopped (SIGTERM, then SIGKILL) when dropped.
#pragma once

#include "tests/e2e/spawn.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <regex>
#include <thread>

namespace tern::e2e {

class Background {
 public:
  explicit Background(const std::vector<std::string>& args)
      : pid_(spawnTern(args, "/dev/null", dir_ / "stdout", dir_ / "stderr")) {}
  ~Background() { stop(); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  std::string out() const { return slurp(dir_ / "stdout"); }
  std::string err() const { return slurp(dir_ / "stderr"); }

  // The first capture group of `pattern` in stdout + stderr, polling until timeout or exit.
  std::optional<std::string> waitFor(const std::string& pattern, double timeoutSeconds = 30) {
    const std::regex re(pattern);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration<double>(timeoutSeconds);
    for (;;) {
      std::smatch m;
      const std::string all = out() + "\n" + err();
      if (std::regex_search(all, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
      if (!running() || std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exitStatus_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  // SIGTERM, then SIGKILL after 5 s; returns the wait status (or the one seen before).
  int stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      for (int i = 0; i < 250 && running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        int status = 0;
        waitpid(pid_, &status, 0);
        exitStatus_ = status;
        pid_ = -1;
      }
    }
    return exitStatus_;
  }

 private:
  TempDir dir_;
  pid_t pid_ = -1;
  int exitStatus_ = 0;
};

// A `tern worker` on loopback with a free port; address() once it listens.
class WorkerProcess {
 public:
  // calibrate = false starts it with --no-calibrate (faster; layers are then split evenly).
  explicit WorkerProcess(std::vector<std::string> extra = {}, bool calibrate = false)
      : proc_(args(std::move(extra), calibrate)) {
    auto addr = proc_.waitFor(R"(listening on (\S+))");
    if (!addr) {
      throw std::runtime_error("tern worker did not start: " + proc_.out() + proc_.err());
    }
    address_ = *addr;
    if (auto m = proc_.waitFor(R"(http://(\S+)/metrics)", 0.2)) metrics_ = *m;
  }
  const std::string& address() const { return address_; }
  const std::string& metricsAddress() const { return metrics_; }  // "" without --metrics
  Background& process() { return proc_; }

 private:
  static std::vector<std::string> args(std::vector<std::string> extra, bool calibrate) {
    std::vector<std::string> a{"worker", "--listen", "127.0.0.1:0", "--threads", "1"};
    if (!calibrate) a.push_back("--no-calibrate");
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  Background proc_;
  std::string address_;
  std::string metrics_;
};

// GET http://HOST:PORT/path over plain TCP (HTTP/1.0); returns the body ("" on failure).
inline std::string httpGet(const std::string& hostPort, const std::string& path) {
  const auto colon = hostPort.rfind(':');
  if (colon == std::string::npos) return "";
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
  inet_pton(AF_INET, hostPort.substr(0, colon).c_str(), &sa.sin_addr);
  std::string resp;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + hostPort + "\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) resp.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  const auto body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

// The value of the first sample of `metric` whose label text contains every `labelParts`
// ("name{...} value" lines of the Prometheus text format); nullopt when absent.
inline std::optional<double> metricValue(const std::string& text, const std::string& metric,
                                         const std::vector<std::string>& labelParts = {}) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, metric.size(), metric) != 0) continue;
    const char next = line.size() > metric.size() ? line[metric.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    bool all = true;
    for (const auto& p : labelParts) all = all && line.find(p) != std::string::npos;
    if (!all) continue;
    const auto sp = line.rfind(' ');
    try {
      return std::stod(line.substr(sp + 1));
    } catch (...) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace tern::e2e
