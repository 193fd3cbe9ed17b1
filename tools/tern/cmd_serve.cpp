// tern serve: an OpenAI-compatible HTTP server over the pipeline (server/http_server.hpp), on the
// embedded default or on running `tern worker`s. Listens first (/health says 503 while the model
// loads), then loads; stops on SIGINT / SIGTERM.
#include "tools/tern/commands.hpp"

#include "coordinator/cluster.hpp"
#include "kernels/dispatch.hpp"
#include "runtime/metrics_endpoint.hpp"
#include "runtime/model_file.hpp"
#include "runtime/service.hpp"
#include "server/http_server.hpp"
#include "topology/machine.hpp"

#include <kj/exception.h>
#include <prometheus/registry.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

namespace tern::cli {
namespace {

struct ServeArgs {
  std::string model;
  std::string workers;
  bool insecure = false;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string apiKey, apiKeyFile;
  int parallel = 8;
  int queue = 64;
  int ctx = 0;
  int threads = 0;
  std::string alias;
  double timeout = 600, readTimeout = 10, writeTimeout = 30, pingInterval = 5;
  uint64_t maxBody = 8u << 20;
  int maxTokens = 0;
  std::string metrics;
  int stages = 0;
  std::string split = "auto", shardSource = "auto", workerModel;
  std::string kernels = "auto", actQuant = "auto", kvType = "f16", head = "f16";
};

std::string readKeyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --api-key-file " + path);
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
  if (key.empty()) throw std::runtime_error("--api-key-file " + path + " holds no key on its first line");
  return key;
}

void serve(const ServeArgs& a, bool threadsGiven) {
  server::HttpServer::blockShutdownSignals();  // before any thread starts
  if (!a.apiKey.empty() && !a.apiKeyFile.empty()) throw std::runtime_error("give --api-key or --api-key-file, not both");
  if (a.port < 0 || a.port > 65535) throw std::runtime_error("--port must be in 0..65535");
  const topo::Machine machine = topo::Machine::detect();
  runtime::OpenedModel model = runtime::openModel(a.model);
  const ModelConfig& cfg = model.cfg;

  std::unique_ptr<runtime::MetricsEndpoint> endpoint;
  std::shared_ptr<prometheus::Registry> registry;
  if (!a.metrics.empty()) {
    endpoint = std::make_unique<runtime::MetricsEndpoint>(a.metrics, "server");
    registry = endpoint->registry();
    std::fprintf(stderr, "tern serve: metrics also at http://%s/metrics\n", endpoint->address().c_str());
  } else {
    registry = std::make_shared<prometheus::Registry>();
    runtime::registerProcessInfo(*registry, "server");
  }

  runtime::ServiceOptions so;
  so.pipeline.workers = a.workers.empty() ? std::vector<std::string>{} : coord::parseWorkerList(a.workers);
  so.pipeline.insecure = a.insecure;
  so.pipeline.stages = a.stages;
  so.pipeline.split = a.split;
  so.pipeline.source = a.shardSource;
  so.pipeline.workerPath = a.workerModel;
  so.pipeline.threads = threadsGiven ? a.threads : 0;
  so.pipeline.kernels = a.kernels;
  so.pipeline.actQuant = a.actQuant;
  so.pipeline.kvType = a.kvType;
  so.pipeline.head = a.head;
  so.pipeline.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  so.nCtx = runtime::contextSize(cfg, static_cast<uint64_t>(a.ctx));
  so.parallel = static_cast<uint32_t>(a.parallel);
  so.queue = static_cast<uint32_t>(a.queue);
  so.metrics = registry;

  server::ServerOptions ho;
  ho.host = a.host;
  ho.port = static_cast<uint16_t>(a.port);
  ho.apiKey = a.apiKeyFile.empty() ? a.apiKey : readKeyFile(a.apiKeyFile);
  ho.modelId = a.alias.empty() ? std::filesystem::path(a.model).stem().string() : a.alias;
  ho.maxBodyBytes = a.maxBody;
  ho.readTimeout = a.readTimeout;
  ho.writeTimeout = a.writeTimeout;
  ho.requestTimeout = a.timeout;
  ho.pingInterval = a.pingInterval;
  ho.maxTokens = static_cast<uint32_t>(a.maxTokens);

  std::fprintf(stderr, "tern serve: model %s (%s), %u layers, vocab %u; %d sequences at once, queue %d\n",
               ho.modelId.c_str(), a.model.c_str(), cfg.nLayer, cfg.nVocab, a.parallel, a.queue);
  runtime::Service service(std::move(model), std::move(so), machine);
  server::HttpServer http(service, std::move(ho), registry);
  std::fprintf(stderr, "tern serve listening on http://%s:%u\n",
               a.host.find(':') != std::string::npos ? ("[" + a.host + "]").c_str() : a.host.c_str(),
               static_cast<unsigned>(http.port()));
  std::fflush(stderr);

  // Report the load's outcome while serving /health; a failed load keeps the server up (503s
  // name the error) so that orchestrators see why.
  std::thread reporter([&service] {
    while (service.state() == runtime::Service::State::Loading) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (service.state() == runtime::Service::State::Ready) {
      for (const auto& line : service.stageLines()) std::fprintf(stderr, "%s\n", line.c_str());
      std::fprintf(stderr, "tern serve ready: %s (context %u)\n",
                   service.model().cfg.name.c_str(), service.nCtx());
    } else {
      std::fprintf(stderr, "tern serve: loading failed: %s\n", service.loadError().c_str());
    }
    std::fflush(stderr);
  });
  const int sig = server::HttpServer::waitForSignal();
  std::fprintf(stderr, "tern serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  reporter.join();
  service.stop();  // no generation callback after this; then the HTTP side goes
}

}  // namespace

void addServeCommand(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "serve a model over an OpenAI-compatible HTTP API");
  cmd->add_option("-m,--model", a->model, "model file (GGUF)")->required();
  cmd->add_flag("--insecure", a->insecure, "allow workers that are not on loopback: cluster links are plain, "
                "unauthenticated TCP");
  cmd->add_option("--workers", a->workers,
                  "running `tern worker`s host:port,... (default: one in-process worker per NUMA node)");
  cmd->add_option("--host", a->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->port, "port to listen on; 0 = any free port")->capture_default_str();
  cmd->add_option("--api-key", a->apiKey, "require \"Authorization: Bearer KEY\" on the API");
  cmd->add_option("--api-key-file", a->apiKeyFile, "read the API key from the first line of a file");
  cmd->add_option("--parallel", a->parallel, "sequences generating at once (each holds -c KV positions)")
      ->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--queue", a->queue, "generations waiting for a slot; more get 503")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("-c,--ctx-size", a->ctx, "context per sequence (default: min(model, 4096))")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("-t,--threads", a->threads, "compute threads per worker (its node's physical cores)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--alias", a->alias, "model id in the API (default: the file name without .gguf)");
  cmd->add_option("--timeout", a->timeout, "seconds a completion request may take")
      ->check(CLI::Range(0.1, 86400.0))->capture_default_str();
  cmd->add_option("--read-timeout", a->readTimeout, "seconds to receive a whole request (and keep-alive idle)")
      ->check(CLI::Range(0.1, 3600.0))->capture_default_str();
  cmd->add_option("--write-timeout", a->writeTimeout, "seconds for one write to the client")
      ->check(CLI::Range(0.1, 3600.0))->capture_default_str();
  cmd->add_option("--ping-interval", a->pingInterval, "seconds of silence before an SSE ': ping' comment")
      ->check(CLI::Range(0.05, 3600.0))->capture_default_str();
  cmd->add_option("--max-body", a->maxBody, "largest request body in bytes (413 beyond)")
      ->check(CLI::Range(uint64_t{1024}, uint64_t{1} << 32))->capture_default_str();
  cmd->add_option("--max-tokens", a->maxTokens, "largest max_tokens a request may ask (default: the context)")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--metrics", a->metrics, "also serve Prometheus metrics at HOST:PORT/metrics (they are always at /metrics)");
  cmd->add_option("--stages", a->stages, "pipeline stages spread evenly over the workers (default: one per worker)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--split", a->split, "layers per stage: auto, even or plan")
      ->check(CLI::IsMember({"auto", "even", "plan"}))->capture_default_str();
  cmd->add_option("--shard-source", a->shardSource, "where workers get weights: auto, path or stream")
      ->check(CLI::IsMember({"auto", "path", "stream"}))->capture_default_str();
  cmd->add_option("--worker-model", a->workerModel, "the model's path on the workers (default: -m)");
  cmd->add_option("--kernels", a->kernels, "kernel variant")
      ->check(CLI::IsMember(kernels::kernelNames()))->capture_default_str();
  cmd->add_option("--act-quant", a->actQuant, "activation quantisation")
      ->check(CLI::IsMember({"auto", "int8", "float"}))->capture_default_str();
  cmd->add_option("--kv-type", a->kvType, "KV cache type")->check(CLI::IsMember({"f16", "f32"}))->capture_default_str();
  cmd->add_option("--head", a->head, "head numerics: f16 (lossless) or q8")
      ->check(CLI::IsMember({"f16", "q8"}))->capture_default_str();
  cmd->callback([cmd, a] {
    try {
      serve(*a, cmd->count("-t") > 0);
    } catch (const kj::Exception& e) {
      throw std::runtime_error(std::string(e.getDescription().cStr()));
    }
  });
}

}  // namespace tern::cli
