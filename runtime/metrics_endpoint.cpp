#include "runtime/metrics_endpoint.hpp"

#include "protocol/address.hpp"

#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <chrono>
#include <stdexcept>

#ifndef TERN_BUILD_COMMIT
#define TERN_BUILD_COMMIT "unknown"
#endif

namespace tern::runtime {

void registerProcessInfo(prometheus::Registry& registry, const std::string& role) {
  prometheus::BuildGauge()
      .Name("tern_build_info")
      .Help("Build of this tern process (value 1)")
      .Register(registry)
      .Add({{"version", "0.1.0"}, {"commit", TERN_BUILD_COMMIT}, {"role", role}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("tern_process_start_time_seconds")
      .Help("Start of this process, seconds since the Unix epoch")
      .Register(registry)
      .Add({})
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
}


MetricsEndpoint::MetricsEndpoint(const std::string& address, const std::string& role)
    : registry_(std::make_shared<prometheus::Registry>()) {
  proto::HostPort hp;
  try {
    hp = proto::parseHostPort(address);  // port 0: any free port
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error("--metrics wants HOST:PORT (got \"" + address + "\"): " + e.what());
  }
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot serve metrics on " + address + ": " + e.what());
  }
  const auto ports = exposer_->GetListeningPorts();
  address_ = proto::joinHostPort(hp.host, ports.empty() ? hp.port : ports.front());
  exposer_->RegisterCollectable(registry_);

  registerProcessInfo(*registry_, role);
}

MetricsEndpoint::~MetricsEndpoint() = default;

}  // namespace tern::runtime
