// A process's Prometheus endpoint: one registry shared by everything in the process (the
// coordinator's engine, in-process workers), served at http://HOST:PORT/metrics by
// prometheus-cpp's Exposer (civetweb, its own threads).
#pragma once

#include <memory>
#include <string>

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace tern::runtime {

// Registers tern_build_info (version, commit, role) and tern_process_start_time_seconds: every
// tern process's registry carries them.
void registerProcessInfo(prometheus::Registry& registry, const std::string& role);

class MetricsEndpoint {
 public:
  // address "host:port" (port 0 = any free port). Throws std::runtime_error
  // "cannot serve metrics on ADDRESS: ..." when it cannot listen. `role` labels tern_build_info.
  MetricsEndpoint(const std::string& address, const std::string& role);
  ~MetricsEndpoint();  // stopping civetweb takes up to ~2 s
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }
  const std::string& address() const { return address_; }  // with the port bound

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

}  // namespace tern::runtime
