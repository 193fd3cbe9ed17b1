// TERN_T2: tern's 2-bit ternary weight format (on disk and in memory, ISA-independent).
//
// A weight matrix [nOut rows, k columns] with w in {-1, 0, +1} and one float32 scale s_w.
// Each row is padded to a multiple of 128 elements with zero weights and cut into 128-element
// blocks of 32 bytes. Code c = w + 1 (0 -> -1, 1 -> 0, 2 -> +1; 3 is never written).
//
//   block byte p (0..31):   bit 7 6 | 5 4 | 3 2 | 1 0
//                               e96+p | e64+p | e32+p | e0+p      (least significant pair first)
//
// Tensor bytes = nOut * t2RowBytes(k) + 32: after the rows, a 32-byte trailer holding the float32
// scale s_w (little endian) then 28 zero bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::kernels {

inline constexpr uint32_t kT2BlockElems = 128;
inline constexpr uint32_t kT2BlockBytes = 32;
inline constexpr uint32_t kT2TrailerBytes = 32;

// Elements per row after padding, and bytes per packed row.
constexpr uint32_t t2PaddedK(uint32_t k) { return (k + kT2BlockElems - 1) / kT2BlockElems * kT2BlockElems; }
constexpr size_t t2RowBytes(uint32_t k) { return size_t(t2PaddedK(k)) / kT2BlockElems * kT2BlockBytes; }
constexpr size_t t2TensorBytes(uint32_t k, uint32_t nOut) { return t2RowBytes(k) * nOut + kT2TrailerBytes; }

// w: [k] values in {-1, 0, +1}; dst: [t2RowBytes(k)] bytes. Padding gets code 1.
void t2PackRow(const int8_t* w, uint32_t k, uint8_t* dst);
// src: [t2RowBytes(k)]; w: [k] values in {-1, 0, +1}.
void t2UnpackRow(const uint8_t* src, uint32_t k, int8_t* w);
// Writes the 32-byte trailer holding scale; reads it back.
void t2WriteTrailer(float scale, uint8_t* dst);
float t2ReadTrailer(const uint8_t* trailer);

}  // namespace tern::kernels
