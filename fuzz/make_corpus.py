#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (run once; the files are committed).
Small by design: a few valid inputs and a few broken ones per target. Regression inputs for
bugs the fuzzers found are added by hand as regress-*."""
import os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")


def put(target, name, blob):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob.encode() if isinstance(blob, str) else blob)


# --- gguf --------------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b

U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10

def kv(key, t, payload):
    return gstr(key) + struct.pack("<I", t) + payload

def arr(elem, items):
    out = struct.pack("<IQ", elem, len(items))
    for x in items:
        out += {STR: gstr, F32: lambda v: struct.pack("<f", v), I32: lambda v: struct.pack("<i", v),
                U32: lambda v: struct.pack("<I", v)}[elem](x)
    return out

def gguf(kvs, tensors, version=3, align=32):
    # tensors: (name, dims, type, bytes)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    off, infos, blobs = 0, b"", []
    for name, dims, ttype, data in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, off)
        blobs.append((off, data))
        off += (len(data) + align - 1) // align * align
    body = head + infos
    body += b"\0" * ((-len(body)) % align)
    data = bytearray(off)
    for o, d in blobs:
        data[o:o + len(d)] = d
    return body + bytes(data)

toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(8)] + ["\u2581", "a", "b", "\u2581a", "ab"]
spm_kvs = [
    kv("general.architecture", STR, gstr("llama")),
    kv("general.alignment", U32, struct.pack("<I", 32)),
    kv("tokenizer.ggml.model", STR, gstr("llama")),
    kv("tokenizer.ggml.tokens", ARR, arr(STR, toks)),
    kv("tokenizer.ggml.scores", ARR, arr(F32, [0.0] * 11 + [-1.0, -2.0, -3.0, -4.0])),
    kv("tokenizer.ggml.token_type", ARR, arr(I32, [2, 3, 3] + [6] * 8 + [1] * 4)),
    kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
    kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
    kv("tokenizer.chat_template", STR, gstr("{% for m in messages %}[INST] {{ m.content }}{% endfor %}")),
]
llama_kvs = [
    kv("llama.block_count", U32, struct.pack("<I", 1)),
    kv("llama.context_length", U32, struct.pack("<I", 64)),
    kv("llama.embedding_length", U32, struct.pack("<I", 8)),
    kv("llama.feed_forward_length", U32, struct.pack("<I", 16)),
    kv("llama.attention.head_count", U32, struct.pack("<I", 2)),
    kv("llama.attention.head_count_kv", U32, struct.pack("<I", 1)),
    kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
    kv("llama.rope.freq_base", F32, struct.pack("<f", 10000.0)),
]
f32 = lambda n: struct.pack("<%df" % n, *([0.5] * n))
tensors = [("token_embd.weight", [8, 15], 0, f32(8 * 15)),
           ("output_norm.weight", [8], 0, f32(8)),
           ("blk.0.attn_norm.weight", [8], 0, f32(8)),
           ("blk.0.attn_q.weight", [8, 8], 1, b"\0\x3c" * 64)]  # F16
valid = gguf(spm_kvs + llama_kvs, tensors)
put("gguf", "valid-llama-spm.gguf", valid)
put("gguf", "valid-v2-no-tensors.gguf", gguf(spm_kvs[:3], [], version=2))
bpe_kvs = [kv("general.architecture", STR, gstr("bitnet-b1.58")),
           kv("tokenizer.ggml.model", STR, gstr("gpt2")),
           kv("tokenizer.ggml.pre", STR, gstr("llama-bpe")),
           kv("tokenizer.ggml.tokens", ARR, arr(STR, ["a", "b", "ab", "\u0120", "\u0120a", "<|eot_id|>"])),
           kv("tokenizer.ggml.token_type", ARR, arr(I32, [1, 1, 1, 1, 1, 3])),
           kv("tokenizer.ggml.merges", ARR, arr(STR, ["a b", "\u0120 a"])),
           kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 5))]
put("gguf", "valid-bpe.gguf", gguf(bpe_kvs, [("t", [4, 2], 0, f32(8))]))
put("gguf", "broken-truncated.gguf", valid[: len(valid) // 3])
put("gguf", "broken-bad-magic.gguf", b"GGUX" + valid[4:200])
put("gguf", "broken-huge-count.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
nested = kv("x.nested", ARR, struct.pack("<IQ", ARR, 1) + arr(U32, [1, 2, 3]))
put("gguf", "valid-nested-array.gguf", gguf([nested], []))
with open(os.path.join(data_dir, "stories260K", "stories260K.gguf"), "rb") as f:
    put("gguf", "broken-stories260K-head.gguf", f.read(12000))  # real metadata, cut short

# --- tokenizer: byte 0 = tokenizer (0 stories260K, 1 llama-2 spm, 2 llama-3 bpe) | flags -----
texts = ["Once upon a time, there was a little girl.", "Hello world!  \t\n 123 4567",
         "caf\u00e9 \u65e5\u672c\u8a9e \U0001F600 <s></s><unk>", "<|begin_of_text|>Hi<|eot_id|>'s don't"]
for i, t in enumerate(texts):
    for which in range(3):
        if (i + which) % 2 == 0 or i == 3:
            put("tokenizer", f"encode-{which}-{i}", bytes([which | 8 | 16]) + t.encode())
put("tokenizer", "encode-invalid-utf8", bytes([2 | 16]) + b"\xff\xfe\xc3\x28\xe2\x82 a\x80b\xf0\x9f\x98")
put("tokenizer", "encode-spm-invalid-utf8", bytes([1 | 8]) + b"\xc0\xaf\xed\xa0\x80 x")
for which in range(3):
    ids = [1, 2, 3, 100, 300, 511, 0, 5000, 128000, 128009]
    put("tokenizer", f"decode-{which}", bytes([which | 4 | 8]) + struct.pack("<%di" % len(ids), *ids))
put("tokenizer", "decode-out-of-range", bytes([2 | 4 | 32]) + struct.pack("<3i", -1, 1 << 30, 5))

# --- protocol: byte 0 = root (0 Batch, 1 Logits, 2 ShardSpec, 3 StageInfo, 4 WorkerInfo, ----
# 5 StageStats, 6 Worker.upload params, 7 Upload.write params); then a message. Built with the
# capnp tool from text (capnp encode) when available, else hand-made minimal messages.
import subprocess, shutil
schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "protocol", "tern.capnp")
def encode(struct_name, text):
    r = subprocess.run(["capnp", "encode", schema, struct_name], input=text.encode(),
                       capture_output=True, check=True)
    return r.stdout
if shutil.which("capnp"):
    put("protocol", "batch-tokens", b"\0" + encode("Batch", "(id = 7, seqIds = [1, 2], positions = [0, 5], tokens = [10, 20], wantLogits = [false, true])"))
    put("protocol", "batch-act", b"\0" + encode("Batch", "(id = 8, seqIds = [1], positions = [3], nEmbd = 2, activations = 0x\"0000803f 00000040\", wantLogits = [true])"))
    put("protocol", "batch-broken-lengths", b"\0" + encode("Batch", "(seqIds = [1, 2], positions = [0], tokens = [1, 2], wantLogits = [true, true])"))
    put("protocol", "logits", b"\1" + encode("Logits", "(batchId = 3, seqIds = [4], positions = [9], nVocab = 2, data = 0x\"0000803f 00000040\")"))
    put("protocol", "logits-broken-size", b"\1" + encode("Logits", "(batchId = 3, seqIds = [4, 5], positions = [9, 1], nVocab = 2, data = 0x\"0000803f\")"))
    put("protocol", "shardspec-path", b"\2" + encode("ShardSpec", "(modelName = \"m\", modelHash = 12345, layerBegin = 0, layerEnd = 4, embed = true, source = (path = \"/models/m.gguf\"), maxSequences = 8, nCtx = 512, kernels = \"auto\", actQuant = \"auto\", kvType = \"f16\", headType = \"f16\")"))
    put("protocol", "shardspec-upload", b"\2" + encode("ShardSpec", "(layerBegin = 4, layerEnd = 8, head = true, source = (upload = 99), maxSequences = 1, nCtx = 64)"))
    put("protocol", "shardspec-broken-range", b"\2" + encode("ShardSpec", "(layerBegin = 4, layerEnd = 2, source = (path = \"\"), maxSequences = 0, nCtx = 0)"))
    put("protocol", "stageinfo", b"\3" + encode("StageInfo", "(layerBegin = 0, layerEnd = 2, kernel = \"avx2\", machine = \"x\")"))
    put("protocol", "workerinfo", b"\4" + encode("WorkerInfo", "(host = \"h\", address = \"127.0.0.1:7001\", numaNode = 0, nodes = [(index = 0, cores = 4, memoryBytes = 1000)], kernel = \"ref\")"))
    put("protocol", "stagestats", b"\5" + encode("StageStats", "(shardId = 1, batches = 3, tokens = 30)"))
# The parameter structs of Worker.upload / Upload.write, hand-encoded (capnp encode does not
# name them): one segment; root struct pointer; data words; then the chunk bytes.
def message(words):
    return struct.pack("<II", 0, len(words) // 8) + words
# Worker.upload: struct of 2 data words (bytes, contentHash), 0 pointers.
put("protocol", "upload-params", b"\6" + message(struct.pack("<IHH", 0, 2, 0) + struct.pack("<QQ", 4096, 77)))
# Upload.write: 1 data word (offset), 1 pointer (data: a byte list of 10 right after).
chunk = bytes(range(10))
put("protocol", "upload-write", b"\7" + message(struct.pack("<IHH", 0, 1, 1) + struct.pack("<Q", 0) +
    struct.pack("<II", (0 << 2) | 1, (len(chunk) << 3) | 2) + chunk + b"\0" * ((-len(chunk)) % 8)))
put("protocol", "broken-segment-table", b"\0" + struct.pack("<II", 5, 1000) + b"\0" * 16)
put("protocol", "broken-empty", b"\2")

# --- openai: byte 0 = endpoint (1 chat, 0 completions), then the body ------------------------
bodies = [
    (1, '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "stream": true, "stream_options": {"include_usage": true}}'),
    (1, '{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "logprobs": true, "top_logprobs": 3, "n": 2, "seed": -5, "stop": ["\\n", "x"]}'),
    (1, '{"messages": [{"role": "tool", "content": 5}], "temperature": 3}'),
    (1, '{"messages": []}'),
    (0, '{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 1.5, "frequency_penalty": -1, "user": "u"}'),
    (0, '{"prompt": [1, 2, 3, 128000], "logprobs": 5, "stop": "END", "max_completion_tokens": 2147483647}'),
    (0, '{"prompt": ["a", "b"], "n": 99}'),
    (0, '{"prompt": [1.5, -1]}'),
    (0, '{"prompt": "x", "seed": 18446744073709551615, "top_p": 0}'),
    (0, '[1, 2]'),
    (1, '{"messages": [{"role": "user", "content": "\\ud800"}]'),
    (0, '{"prompt": "caf\xc3\xa9 \xff"}'),
]
for i, (ep, b) in enumerate(bodies):
    put("openai", f"body-{i:02d}", bytes([ep]) + (b.encode("latin-1") if "\xff" in b else b.encode()))

# --- chat_template: byte 0 bit 0 = assistant prefix; messages split at NUL, first byte = role -
def chat(prefix, msgs):
    return bytes([prefix]) + b"\0".join(bytes([r]) + c.encode() for r, c in msgs)
put("chat_template", "system-user", chat(1, [(0, "You are helpful."), (1, "Hi!")]))
put("chat_template", "multi-turn", chat(0, [(1, "a"), (2, "b"), (1, "c <|eot_id|> [INST]"), (2, "d")]))
put("chat_template", "trailing-system", chat(1, [(1, "u"), (0, "late system")]))
put("chat_template", "unknown-role", chat(1, [(0xC0, "tool:result"), (1, "x")]))
put("chat_template", "custom-known-role", chat(0, [(0xC1, "assistant:ok")]))
put("chat_template", "jinja-llama3", b"\0<|start_header_id|>{{ role }}<|end_header_id|>")
put("chat_template", "empty-contents", chat(1, [(0, ""), (1, ""), (2, "")]))
print("corpus written to", root, file=sys.stderr)
