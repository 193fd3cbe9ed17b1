// libFuzzer target: the RPC message readers. The first byte picks the root struct (Batch,
// Logits, ShardSpec, StageInfo, WorkerInfo, StageStats, and the parameters of Worker.upload and
// Upload.write as a worker receives them); the rest, copied into aligned words, is a Cap'n Proto
// message (segment table + segments) read with capnp::FlatArrayMessageReader, as the RPC layer
// hands it to us. Only kj::Exception (a malformed message) and std::invalid_argument (a codec
// check naming the field) may escape; a read that succeeds must pass the validators the writers
// use, so a message read is one we could have written.
#include "protocol/codec.hpp"

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

using namespace tern;
using namespace tern::proto;

namespace {

[[noreturn]] void bug(const char* what) {
  std::fprintf(stderr, "protocol reader: %s\n", what);
  std::abort();
}

void touch(capnp::Data::Reader d) {
  if (d.size() != 0) {
    volatile uint8_t a = d[0], b = d[d.size() - 1];
    (void)a;
    (void)b;
  }
}

void readOne(uint8_t which, capnp::MessageReader& msg) {
  switch (which % 8) {
    case 0: {
      BatchData b = readBatch(msg.getRoot<Batch>());
      try {
        validateBatch(b);
      } catch (const std::invalid_argument&) {
        bug("readBatch accepted a batch validateBatch refuses");
      }
      capnp::MallocMessageBuilder out;
      writeBatch(b, out.initRoot<Batch>());
      break;
    }
    case 1: {
      LogitsData l = readLogits(msg.getRoot<Logits>());
      try {
        validateLogits(l);
      } catch (const std::invalid_argument&) {
        bug("readLogits accepted logits validateLogits refuses");
      }
      capnp::MallocMessageBuilder out;
      writeLogits(l, out.initRoot<Logits>());
      break;
    }
    case 2: {
      ShardSpecData s = readShardSpec(msg.getRoot<ShardSpec>());
      capnp::MallocMessageBuilder out;
      writeShardSpec(s, out.initRoot<ShardSpec>());
      // What was written reads back the same way.
      (void)readShardSpec(out.getRoot<ShardSpec>().asReader());
      break;
    }
    case 3: (void)readStageInfo(msg.getRoot<StageInfo>()); break;
    case 4: (void)readWorkerInfo(msg.getRoot<WorkerInfo>()); break;
    case 5: (void)readStageStats(msg.getRoot<StageStats>()); break;
    case 6: {
      // Worker.upload(bytes, contentHash): the worker reads both scalars.
      auto p = msg.getRoot<Worker::UploadParams>();
      (void)p.getBytes();
      (void)p.getContentHash();
      break;
    }
    default: {
      // Upload.write(offset, data): the worker reads the offset and every byte of the chunk.
      auto p = msg.getRoot<Upload::WriteParams>();
      (void)p.getOffset();
      touch(p.getData());
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t n = size - 1;
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>((n + 7) / 8);
  if (n) std::memcpy(words.begin(), data + 1, n);
  try {
    capnp::ReaderOptions opts;  // the RPC defaults: 64 MiB traversal limit, nesting 64
    capnp::FlatArrayMessageReader msg(kj::ArrayPtr<const capnp::word>(words.begin(), words.size()), opts);
    readOne(data[0], msg);
  } catch (const kj::Exception&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
