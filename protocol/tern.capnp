@0xb00b19b71dc276db;
# The wire between tern's coordinator and its workers, and between workers. This file is the only
# definition of the wire. Evolution: ordinals only grow; new fields and parameters go last with
# defaults; an incompatible change bumps protocolVersion.
#
# Set-up: the coordinator dials every worker (bootstrap capability: Worker), checks the version
# and reads each worker's description (hello), plans the placement, loads one shard per pipeline
# stage (loadShard, weights from the worker's own copy of the GGUF or streamed through an Upload),
# then links every stage to the next (Stage.link): a stage on another worker is dialled by the
# stage's own worker, so activations travel worker to worker, never through the coordinator; the
# last stage is linked to the coordinator's Sink.
#
# One step: the coordinator calls forward(batch) on the first stage. Each stage computes its
# layers and calls forward() on its next stage with the activations; the last stage calls
# sink.deliver() with the logits. forward() returns when the whole remaining pipeline is done with
# the batch, so an error anywhere downstream reaches the coordinator. Several batches may be in
# flight: each connection delivers calls in order, and a stage handles its batches in arrival
# order. Every message stays under Cap'n Proto's 64 MiB limit: the coordinator sizes batches so
# that activations and logits fit in protocol/codec.hpp's kMaxPayloadBytes.
#
# Units: bytes, seconds, GB/s = 1e9 bytes per second, GMAC/s = 1e9 multiply-accumulates per second.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tern::proto");

const protocolVersion :UInt32 = 2;
# Checked in Worker.hello and Stage.hello: peers with different versions refuse to talk.

struct NumaNodeInfo {
  # One NUMA node of a worker's machine.

  index @0 :UInt32;
  # hwloc logical index of the node.

  cores @1 :UInt32;
  # Physical cores whose memory is this node's.

  memoryBytes @2 :UInt64;
  # Local memory of the node.
}

struct WorkerInfo {
  # What a worker process is and how fast it computes; measured when it starts.

  host @0 :Text;
  # Host name of the worker's machine.

  address @1 :Text;
  # The address it listens on ("host:port"), as given by --listen after resolving port 0.

  numaNode @2 :Int32;
  # NUMA node the worker is pinned to (threads and weight memory); -1 when not pinned.

  cores @3 :UInt32;
  # Physical cores of that node (of the machine when not pinned).

  threads @4 :UInt32;
  # Compute threads the worker runs (one OpenMP team).

  memoryBytes @5 :UInt64;
  # Memory of the worker's node (of the machine when not pinned).

  freeBytes @6 :UInt64;
  # Memory still free for shards: memoryBytes less what the loaded shards hold.

  nodes @7 :List(NumaNodeInfo);
  # Every NUMA node of the machine.

  kernel @8 :Text;
  # Kernel variant it computes with ("avx512", "avx2", "neon", "ref", ...).

  calibrationGmacs @9 :Float64;
  # Speed of a calibration ternary matmul (T2 GEMV, 2560 x 6912, all threads), GMAC/s.

  bandwidthGBs @10 :Float64;
  # Measured read bandwidth of its node's memory with all its threads, GB/s.

  boundCpus @11 :Text;
  # CPUs its compute threads are bound to, read back through hwloc ("0-7"); empty when unbound.

  bindingWarning @12 :Text;
  # Why binding was refused by the OS (containers), empty when it worked.

  machine @13 :Text;
  # One-line summary of the machine (packages, nodes, cores, memory).
}

struct ShardSpec {
  # A contiguous range of layers to load as one pipeline stage.

  modelName @0 :Text;
  # general.name of the model, for messages.

  modelHash @1 :UInt64;
  # Identity of the model: tern's 64-bit hash (protocol/hash.hpp) of the GGUF's header, metadata
  # and tensor directory (bytes [0, data offset)). A worker's own copy must match.

  layerBegin @2 :UInt32;
  # First transformer layer.

  layerEnd @3 :UInt32;
  # One past the last layer.

  embed @4 :Bool;
  # The stage holds the token embedding (first stage).

  head @5 :Bool;
  # The stage holds the final norm and head (last stage).

  source :union {
    # Where the weights come from.

    path @6 :Text;
    # The worker's own copy of the whole GGUF file at this path.

    upload @7 :UInt64;
    # A shard file the coordinator streamed through Worker.upload (its contentHash).
  }

  maxSequences @8 :UInt32;
  # Sequences the stage must be able to hold at once; with nCtx sizes the KV cache budget.

  nCtx @9 :UInt32;
  # Positions per sequence.

  threads @10 :UInt32;
  # Compute threads; 0 = the worker's own.

  kernels @11 :Text;
  # Kernel variant to force ("auto" = the worker's choice).

  actQuant @12 :Text;
  # "auto" | "int8" | "float" (ops::ActQuant).

  kvType @13 :Text;
  # "f16" | "f32".

  headType @14 :Text;
  # "f16" (the head as stored) | "q8".
}

struct StageInfo {
  # What a stage holds and how it computes.

  layerBegin @0 :UInt32;
  # First transformer layer held by the stage.

  layerEnd @1 :UInt32;
  # One past the last layer held.

  embed @2 :Bool;
  # The stage turns token ids into activations (it holds token_embd): the first stage.

  head @3 :Bool;
  # The stage applies the final norm and the output head and delivers logits: the last stage.

  kernel @4 :Text;
  # Name of the kernel variant the stage computes with, e.g. "ref".

  weightBytes @5 :UInt64;
  # Bytes of weights the stage reads per token.

  threads @6 :UInt32;
  # Compute threads of the stage.

  machine @7 :Text;
  # One-line summary of the machine the stage runs on.

  shardId @8 :UInt32;
  # Id of the shard on its worker (Worker.shard, NextHop.local / remote).

  kvBytesPerToken @9 :UInt64;
  # KV cache bytes per position per sequence for the stage's layers.

  kvBudgetBytes @10 :UInt64;
  # KV cache bytes reserved for maxSequences x nCtx.
}

struct Batch {
  # A batch of n tokens (any mix of sequences) going through the pipeline. Every list has n
  # entries except where noted. Tokens of one sequence come in increasing position order.

  seqIds @0 :List(UInt64);
  # [n] Sequence id of each token (opened with Stage.openSequence).

  positions @1 :List(UInt32);
  # [n] Position of each token in its sequence; equals the sequence's current length.

  tokens @2 :List(Int32);
  # [n] Token ids, for the first (embedding) stage; empty for the others.

  nEmbd @3 :UInt32;
  # Hidden size: elements per row of activations (0 when activations are empty).

  activations @4 :Data;
  # [n, nEmbd] float32 little-endian hidden states, n*nEmbd*4 bytes; empty for the first stage.

  wantLogits @5 :List(Bool);
  # [n] True where the last stage must deliver logits for that token.

  id @6 :UInt64;
  # Batch id chosen by the coordinator; the logits of the batch carry it back.
}

struct Logits {
  # Logits of the tokens of a batch whose wantLogits was set, in batch order.

  seqIds @0 :List(UInt64);
  # [nRows] Sequence id of each row.

  positions @1 :List(UInt32);
  # [nRows] Position of the token each row belongs to (the row predicts position + 1).

  nVocab @2 :UInt32;
  # Elements per row.

  data @3 :Data;
  # [nRows, nVocab] float32 little-endian, nRows*nVocab*4 bytes.

  batchId @4 :UInt64;
  # Batch.id of the batch these logits come from.
}

struct StageStats {
  # Counters of one stage since it was loaded (or since the last Worker.stats(reset=true)).

  shardId @0 :UInt32;
  layerBegin @1 :UInt32;
  layerEnd @2 :UInt32;

  batches @3 :UInt64;
  # forward() calls served.

  tokens @4 :UInt64;
  # Tokens processed.

  computeSeconds @5 :Float64;
  # Time in the stage's layers (ops::Stage::forward).

  transferSeconds @6 :Float64;
  # Time decoding incoming and encoding outgoing messages, and handing them to the transport.

  waitSeconds @7 :Float64;
  # Time the stage had no batch to work on, between its first and its last batch.

  bytesIn @8 :UInt64;
  # Payload bytes received in batches (activations or token ids).

  bytesOut @9 :UInt64;
  # Payload bytes sent on (activations or logits).

  sequences @10 :UInt32;
  # Sequences open now.

  kvBytes @11 :UInt64;
  # KV cache bytes allocated now.

  mergedBatches @12 :UInt64;
  # Batches that arrived while the stage was busy and were computed together with others as one
  # merged batch (one GEMM over all their tokens).
}

interface Sink {
  # Held by the coordinator; the last stage is linked to it.

  deliver @0 (logits :Logits) -> ();
  # The last stage's output for one batch. Returns once the coordinator has stored it.
}

struct NextHop {
  # Where a stage sends its output.
  union {
    sink @0 :Sink;
    # The coordinator's sink: the stage holds the head.

    local @1 :UInt32;
    # Another shard of the same worker (its shardId).

    remote :group {
      # A shard of another worker, dialled directly by this stage's worker.
      address @2 :Text;
      # "host:port" the other worker listens on.
      shardId @3 :UInt32;
      # The shard's id there.
    }
  }
}

interface Stage {
  # A contiguous range of transformer layers with their weights and the KV cache of every open
  # sequence for those layers.

  hello @0 (version :UInt32) -> (version :UInt32, info :StageInfo);
  # Handshake. `version` is the caller's protocolVersion; fails with
  # "protocol version mismatch: peer X, ours Y" unless equal. Returns the stage's version and info.

  openSequence @1 (seqId :UInt64, maxLen :UInt32);
  # Allocates the KV cache of a new sequence for up to maxLen positions. Fails for an id in use,
  # maxLen over the shard's nCtx, or when maxSequences are already open.

  closeSequence @2 (seqId :UInt64);
  # Frees the sequence's KV cache. Fails for an unknown id.

  link @3 (next :NextHop);
  # Sets where forward() sends its output. A remote hop is dialled (and its version checked)
  # before this returns. Fails for a hop that does not fit (a sink for a stage without the head,
  # an unknown shard). May be called again to relink.

  forward @4 (batch :Batch);
  # Runs the stage's layers on the batch, appending its tokens to the KV caches, then calls
  # forward(batch') on the next stage with the new activations, or, when the stage holds the
  # head, sink.deliver(logits). Returns when the whole remaining pipeline has finished with this
  # batch. A malformed batch (list lengths, activation size, unknown sequence, wrong position,
  # too large) fails before any state changes, as does a stage that is not linked.
}

interface Upload {
  # A shard file being streamed to a worker (commodity boxes share no disk).

  write @0 (offset :UInt64, data :Data) -> stream;
  # Bytes [offset, offset + data.size) of the file; chunks come in order, each at most 16 MiB.

  finish @1 () -> ();
  # All bytes sent: the worker checks the size and contentHash, then keeps the file for
  # loadShard(source.upload = contentHash). Fails naming the mismatch.
}

interface Worker {
  # One worker process (bootstrap capability of its listening socket), pinned to one NUMA node.

  hello @0 (version :UInt32) -> (version :UInt32, info :WorkerInfo);
  # Handshake, first call of a session; fails on a version mismatch like Stage.hello.

  upload @1 (bytes :UInt64, contentHash :UInt64) -> (upload :Upload, cached :Bool);
  # Starts streaming a shard file of `bytes` bytes whose tern hash is contentHash. When the
  # worker already holds that file (cached = true), nothing needs to be sent and upload is null.

  loadShard @2 (spec :ShardSpec) -> (stage :Stage, info :StageInfo);
  # Loads the layers into the worker's node memory. Fails before allocating when weights plus
  # the KV cache for maxSequences x nCtx do not fit in the node's free memory (naming both), when
  # the model's hash differs, or when the file lacks the layers.

  shard @3 (shardId :UInt32) -> (stage :Stage);
  # A loaded shard, for another worker that is linked to it. Fails for an unknown id.

  stats @4 (reset :Bool) -> (stages :List(StageStats));
  # Counters of every loaded shard; reset = true zeroes them after reading.

  unloadShard @5 (shardId :UInt32);
  # Frees a shard's weights and KV caches. Its Stage capabilities fail afterwards.
}
