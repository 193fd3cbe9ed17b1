// libFuzzer target: the GGUF reader (gguf::File::open) and what is read from a file's metadata
// at load time (model config, tokenizer vocab, chat template) over arbitrary bytes, and the
// writer over what the reader accepts (a rewrite reads back and rewrites to the same bytes).
// Only gguf::FormatError (every malformed-file error) may escape those (and
// std::invalid_argument from Tokenizer::create for a vocab it cannot build); anything else —
// another exception, a crash, an ASan/UBSan report — is a bug.
#include "model/chat_template.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/tokenizer.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

using namespace tern;

namespace {

// The reader takes a path and maps it: the input goes into a memfd (one per use, made once per
// process and rewritten for every input), opened through /proc/self/fd.
int newMemfd() {
  const int f = ::memfd_create("fuzz_gguf", MFD_CLOEXEC);
  if (f < 0) {
    std::perror("memfd_create");
    std::abort();
  }
  return f;
}

std::string store(int fd, const void* data, size_t size) {
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != ssize_t(size)) std::abort();
  return "/proc/self/fd/" + std::to_string(fd);
}

// What the writer makes of a file's metadata and tensors, as bytes.
std::vector<std::byte> rewrite(const gguf::File& f) {
  gguf::Writer w(f.version(), f.alignment());
  for (const auto& [key, value] : f.metadata()) w.set(key, value);
  for (const auto& t : f.tensors()) {
    const auto d = f.data(t);
    w.addTensorBytes(t.name, t.type, t.ne, std::vector<std::byte>(d.begin(), d.end()));
  }
  std::vector<std::byte> out;
  // A valid file may ask for a huge alignment (up to 2^31): its rewrite is padded to that much.
  // Not worth the memory here.
  if (w.totalBytes() > (16u << 20)) return out;
  w.stream([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); });
  return out;
}

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "gguf: %s\n", what.c_str());
  std::abort();
}

void touch(std::span<const std::byte> s) {
  // Reads the first and last byte so ASan sees an out-of-range span.
  if (!s.empty()) {
    volatile std::byte a = s.front(), b = s.back();
    (void)a;
    (void)b;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = newMemfd(), fd2 = newMemfd();
  const std::string path = store(fd, data, size);
  std::shared_ptr<const gguf::File> f;
  try {
    f = gguf::File::open(path);
  } catch (const gguf::FormatError&) {
    return 0;
  }
  for (const auto& [key, value] : f->metadata()) {
    (void)value.type();
    (void)value.asInt();
    (void)value.asFloat();
  }
  for (const auto& t : f->tensors()) touch(f->data(t));
  // Whatever the reader accepts, the writer writes, the reader reads back and the writer then
  // writes byte for byte the same (the first rewrite may normalise: offsets, padding). TL1/TL2
  // (bitnet.cpp's shape-specific layouts) are read-only: the writer refuses them by design.
  // A huge alignment (valid up to 2^31) pads the writer's header to that size: skipped.
  bool writable = f->fileSize() <= (1u << 20) && f->alignment() <= (64u << 10);
  for (const auto& t : f->tensors())
    writable = writable && t.type != TensorType::TL1 && t.type != TensorType::TL2;
  if (writable) {
    std::vector<std::byte> once, twice;
    try {
      once = rewrite(*f);  // empty: too large to rewrite in memory
      if (!once.empty()) twice = rewrite(*gguf::File::open(store(fd2, once.data(), once.size())));
    } catch (const std::exception& e) {
      bug(std::string("rewriting an accepted file failed: ") + e.what());
    }
    if (once != twice) bug("a rewritten file does not rewrite to the same bytes");
  }
  try {
    (void)ModelConfig::fromGguf(*f);
  } catch (const gguf::FormatError&) {
  }
  try {
    Vocab v = Vocab::fromGguf(*f);
    // Building the tokenizer indexes every token text; keep it to small vocabs so one input
    // stays fast.
    if (v.tokens.size() <= 4096) {
      try {
        auto tok = Tokenizer::create(std::move(v));
        (void)tok->encode("Hello world <s> \xe2\x96\x81x", true, true);
      } catch (const std::invalid_argument&) {
        // Tokenizer::create refuses an inconsistent vocab (documented).
      }
    }
  } catch (const gguf::FormatError&) {
  }
  try {
    (void)ChatTemplate::forModel(*f, Arch::Llama);
  } catch (const gguf::FormatError&) {
  }
  return 0;
}
