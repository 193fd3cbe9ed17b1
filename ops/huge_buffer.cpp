#include "ops/huge_buffer.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <new>
#include <utility>

namespace tern::ops {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}

HugeBuffer::HugeBuffer(size_t bytes) {
  if (bytes == 0) return;
  // Over-allocate by one huge page so the data can start on a 2 MiB boundary.
  mapped_ = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
  base_ = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base_ == MAP_FAILED) {
    base_ = nullptr;
    mapped_ = 0;
    throw std::bad_alloc();
  }
  const uintptr_t b = reinterpret_cast<uintptr_t>(base_);
  data_ = reinterpret_cast<std::byte*>((b + kHugePage - 1) / kHugePage * kHugePage);
  size_ = bytes;
#if defined(MADV_HUGEPAGE)
  madvise(data_, (bytes + kHugePage - 1) / kHugePage * kHugePage, MADV_HUGEPAGE);  // a hint only
#endif
}

HugeBuffer::~HugeBuffer() {
  if (base_) munmap(base_, mapped_);
}

HugeBuffer::HugeBuffer(HugeBuffer&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)), mapped_(std::exchange(o.mapped_, 0)),
      data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

HugeBuffer& HugeBuffer::operator=(HugeBuffer&& o) noexcept {
  if (this != &o) {
    if (base_) munmap(base_, mapped_);
    base_ = std::exchange(o.base_, nullptr);
    mapped_ = std::exchange(o.mapped_, 0);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

}  // namespace tern::ops
