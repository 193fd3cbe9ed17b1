@0xb00b19b71dc276db;
# The wire between tern's coordinator and its pipeline stages. This file is the only definition
# of the wire. Evolution: ordinals only grow; new fields and parameters go last with defaults;
# an incompatible change bumps protocolVersion.
#
# One step: the coordinator calls forward() on the first stage with the batch, the remaining
# stages and its sink. Each stage computes its layers and calls forward() on the next stage with
# the activations; the last stage calls sink.deliver() with the logits. Activations travel stage
# to stage, never through the coordinator. Every message stays under Cap'n Proto's 64 MiB limit:
# the coordinator sizes its micro-batches so that activations and logits fit.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tern::proto");

const protocolVersion :UInt32 = 1;
# Checked in Stage.hello: peers with different versions refuse to talk.

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
}

interface Sink {
  # Held by the coordinator; handed to the last stage with each forward().

  deliver @0 (logits :Logits) -> ();
  # The last stage's output for one batch. Returns once the coordinator has stored it.
}

interface Stage {
  # A contiguous range of transformer layers with their weights and the KV cache of every open
  # sequence for those layers.

  hello @0 (version :UInt32) -> (version :UInt32, info :StageInfo);
  # Handshake, first call of a session. `version` is the caller's protocolVersion; fails with
  # "protocol version mismatch: peer X, ours Y" unless equal. Returns the stage's version and info.

  openSequence @1 (seqId :UInt64, maxLen :UInt32);
  # Allocates the KV cache of a new sequence for up to maxLen positions. Fails for an id in use.

  closeSequence @2 (seqId :UInt64);
  # Frees the sequence's KV cache. Fails for an unknown id.

  forward @3 (batch :Batch, rest :List(Stage), sink :Sink);
  # Runs the stage's layers on the batch, appending its tokens to the KV caches, then calls
  # rest[0].forward(batch', rest[1..], sink) with the new activations, or, when the stage holds
  # the head (rest must then be empty), sink.deliver(logits). Returns when the whole remaining
  # pipeline has finished with this batch. A malformed batch (list lengths, activation size,
  # unknown sequence, wrong position) fails before any state changes.
}
