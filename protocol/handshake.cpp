#include "protocol/handshake.hpp"

#include "protocol/address.hpp"

#include <stdexcept>
#include <utility>

namespace tern::proto {
namespace {

std::string describe(const kj::Exception& e) { return e.getDescription().cStr(); }

// Reads a hello reply: version checked, the info parsed with its errors as one-line rpc errors.
template <typename Read, typename Reader>
auto readHello(uint32_t version, Reader info, Read read) {
  checkPeerVersion(version);
  try {
    return read(info);
  } catch (const std::invalid_argument& e) {
    throwRpcError(e.what());
  }
}

}  // namespace

void checkPeerVersion(uint32_t peer) {
  if (peer != PROTOCOL_VERSION) {
    throwRpcError("protocol version mismatch: peer " + std::to_string(peer) + ", ours " +
                  std::to_string(PROTOCOL_VERSION));
  }
}

kj::Promise<WorkerInfoData> hello(Worker::Client worker) {
  auto req = worker.helloRequest();
  req.setVersion(PROTOCOL_VERSION);
  return req.send().then([](capnp::Response<Worker::HelloResults>&& r) {
    return readHello(r.getVersion(), r.getInfo(), readWorkerInfo);
  });
}

kj::Promise<StageInfoData> hello(Stage::Client stage) {
  auto req = stage.helloRequest();
  req.setVersion(PROTOCOL_VERSION);
  return req.send().then([](capnp::Response<Stage::HelloResults>&& r) {
    return readHello(r.getVersion(), r.getInfo(), readStageInfo);
  });
}

kj::Promise<kj::Own<WorkerConnection>> dialWorker(kj::Network& network, const std::string& address,
                                                  bool insecure) {
  try {
    checkPlainLink(address, insecure, "dialling");
  } catch (const std::invalid_argument& e) {
    throwRpcError(std::string("refused: ") + e.what());
  }
  auto conn = kj::heap<WorkerConnection>();
  conn->address = address;
  WorkerConnection* c = conn.get();
  return network.parseAddress(address)
      .then([](kj::Own<kj::NetworkAddress> addr) {
        auto stream = addr->connect();
        return stream.attach(kj::mv(addr));
      })
      .then(
          [c](kj::Own<kj::AsyncIoStream> stream) {
            c->stream = kj::mv(stream);
            c->rpc = kj::heap<capnp::TwoPartyClient>(*c->stream);
            c->cap = c->rpc->bootstrap().castAs<Worker>();
            return hello(c->cap).then(
                [c](WorkerInfoData info) { c->info = std::move(info); },
                [](kj::Exception&& e) { throwRpcError("hello: " + describe(e)); });
          },
          [](kj::Exception&& e) -> kj::Promise<void> {
            throwRpcError("cannot connect: " + describe(e));
          })
      .then([conn = kj::mv(conn)]() mutable { return kj::mv(conn); });
}

}  // namespace tern::proto
