// tern's 64-bit content hash: the identity of models (ShardSpec.modelHash) and of streamed shard
// files (Worker.upload's contentHash). Not cryptographic: it catches a different or damaged file,
// not a malicious one (authenticated links are a later step).
//
// Four 64-bit lanes over 32-byte stripes (multiply-rotate per 8-byte word), then the tail bytes
// and the length, so hashing streams at several GB/s per core. Incremental: feeding a byte string
// in any split gives the same value as feeding it whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace tern::proto {

class Hasher {
 public:
  explicit Hasher(uint64_t seed = 0);
  void update(std::span<const std::byte> bytes);
  uint64_t digest() const;  // does not change the state; more updates may follow

 private:
  void stripe(const std::byte* p);  // consumes 32 bytes
  uint64_t lane_[4];
  std::byte buf_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t hash64(std::span<const std::byte> bytes, uint64_t seed = 0);

// A hash as written in names and metadata: 16 lowercase hex digits.
std::string hashHex(uint64_t hash);

// The metadata key of a shard file (written by the coordinator for one stage) that holds the
// whole model's hash (hashHex of ShardSpec.modelHash).
inline constexpr const char* kShardModelHashKey = "tern.shard.model_hash";

}  // namespace tern::proto
