// The stage actor: serves tern.capnp's Stage interface over an ops::Stage.
//
// Runs on one kj event loop thread. forward() decodes the batch, computes the stage's layers,
// then hands the activations to the next stage (or the logits to the sink) and returns that
// call's promise, so the caller sees the whole remaining pipeline finish.
// Errors in a request become kj FAILED exceptions carrying a one-line message; the stage state
// is untouched and the server keeps serving.
// TODO(perf): compute runs on the event loop thread here (embedded mode); the cluster worker
// moves it to a pinned OpenMP team and posts results back through kj::Executor.
#pragma once

#include "ops/stage.hpp"
#include "protocol/codec.hpp"

#include <memory>
#include <string>

namespace tern::worker {

class StageServer final : public proto::Stage::Server {
 public:
  // threads and machine are reported in hello(); the stage computes with its own options.
  StageServer(std::unique_ptr<ops::Stage> stage, unsigned threads, std::string machine);

  proto::StageInfoData info() const;

 protected:
  kj::Promise<void> hello(HelloContext context) override;
  kj::Promise<void> openSequence(OpenSequenceContext context) override;
  kj::Promise<void> closeSequence(CloseSequenceContext context) override;
  kj::Promise<void> forward(ForwardContext context) override;

 private:
  std::unique_ptr<ops::Stage> stage_;
  unsigned threads_;
  std::string machine_;
};

}  // namespace tern::worker
