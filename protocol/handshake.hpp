// The session handshake, in one place: every connection starts with Worker.hello or Stage.hello
// carrying the caller's protocolVersion (tern.capnp); both sides refuse a different one with
// "protocol version mismatch: peer N, ours M". And dialling a worker: connect, bootstrap the
// Worker capability, say hello.
//
// Errors are kj exceptions with one line (rpcError), so they cross the wire and promise chains
// unchanged; synchronous callers catch kj::Exception and name the peer.
#pragma once

#include "protocol/codec.hpp"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <cstdint>
#include <string>

namespace tern::proto {

// Throws rpcError("protocol version mismatch: peer N, ours M") unless peer == PROTOCOL_VERSION.
// The servers call it with the hello's version, the clients with the reply's.
void checkPeerVersion(uint32_t peer);

// Client side: hello with our version, check the reply's, read the description (its
// std::invalid_argument becomes the promise's error, one line).
kj::Promise<WorkerInfoData> hello(Worker::Client worker);
kj::Promise<StageInfoData> hello(Stage::Client stage);

// A dialled worker. Members in destruction order: the capability, then the RPC system, then the
// stream under it.
struct WorkerConnection {
  std::string address;  // as dialled
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> rpc;
  Worker::Client cap = nullptr;
  WorkerInfoData info;  // from its hello
};

// Parses and connects to "host:port", bootstraps Worker and says hello. Fails with
// "cannot connect: WHY" or "hello: WHY" (the caller names the address); a non-loopback address
// without `insecure` fails before any packet is sent (checkPlainLink's message).
kj::Promise<kj::Own<WorkerConnection>> dialWorker(kj::Network& network, const std::string& address,
                                                  bool insecure);

}  // namespace tern::proto
