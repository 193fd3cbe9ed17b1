// libFuzzer target: the GGUF reader (gguf::File::open) and what is read from a file's metadata
// at load time (model config, tokenizer vocab, chat template) over arbitrary bytes.
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

using namespace tern;

namespace {

// The reader takes a path and maps it: the input goes into one memfd per process, rewritten
// for every input, and is opened through /proc/self/fd.
int memfd() {
  static const int fd = [] {
    const int f = ::memfd_create("fuzz_gguf", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  return fd;
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
  const int fd = memfd();
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != ssize_t(size)) std::abort();
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
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
