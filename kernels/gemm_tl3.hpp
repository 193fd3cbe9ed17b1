// TERN_TL3: tern's lookup-table ternary weight format, 1.67 bits per weight (GGUF type id 1001),
// and its integer GEMM kernels (reference here; AVX2 / AVX-512 in avx2_tl3.cpp / avx512_tl3.cpp).
//
// On disk (ISA- and shape-independent). A matrix [nOut rows][k columns], w in {-1, 0, +1}, one
// float32 scale s_w. Each row is padded to a multiple of 96 elements with zero weights and cut
// into 96-element blocks of 20 bytes. Three consecutive weights of a block form a triple j
// (0..31): elements 3j, 3j+1, 3j+2 with value v = 9*w[3j] + 3*w[3j+1] + w[3j+2] in [-13, 13],
// stored as a 4-bit magnitude m = |v| (0..13; 14 and 15 are invalid) and a sign bit (1 = v < 0;
// written 0 for v = 0, read as +0 either way):
//
//   block byte p (0..15):   bit 7 6 5 4 | 3 2 1 0
//                               m[16+p]   |  m[p]            (two magnitudes per byte)
//   block bytes 16..19:     uint32 little endian, bit j = sign of triple j (j = 0..31)
//
//   5 bits per 3 weights: 20 B per 96 weights = 1.667 bits/weight.
//
// Tensor bytes = nOut * tl3RowBytes(k) + 32: after the rows, a 32-byte trailer holding the float32
// scale s_w (little endian) then 28 zero bytes (as TERN_T2).
//
// In memory (tl3Interleave, at load time): rows in groups of 64 (the last group padded with zero
// rows); for group g and block b, 20 lines of 64 bytes where byte i of line l is byte l of row
// 64g + i's block b: a transposition, so one SIMD load gives one block byte of 64 (or 32) rows.
//   [nGroups][nBlocks][20 lines][64 rows] bytes, then int32 nNeg[nGroups * 64]: per row, the
//   number of triples with the sign bit set (used by the SIMD kernels' sign trick, below).
//
// Lookup tables, per token: for each triple j of the padded row, T_j(m) = a*q[3j] + b*q[3j+1] +
// c*q[3j+2] where (a, b, c) are the balanced-ternary digits of m (m = 9a + 3b + c, 0 <= m <= 13);
// T_j(14) = T_j(15) = 0. |T| <= 384 needs int16: stored as 16 low bytes then 16 high bytes
// (32 B per triple), so that byte shuffles (pshufb) gather both halves by the 4-bit magnitudes.
//   acc[r] = sum_j (sign_j ? -T_j(m_j) : T_j(m_j)) = sum_i w[r][i] * q[i]   (exact).
// The SIMD kernels apply the sign per byte as x ^ s (s in {0x00, 0xff}: ~T = -T - 1 on the int16),
// sum in int16 and add nNeg at the end: -T = (T ^ s) - s.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern::kernels {

inline constexpr uint32_t kTl3BlockElems = 96;
inline constexpr uint32_t kTl3BlockTriples = 32;
inline constexpr uint32_t kTl3BlockBytes = 20;
inline constexpr uint32_t kTl3TrailerBytes = 32;
inline constexpr uint32_t kTl3GroupRows = 64;    // rows per interleaved group
inline constexpr uint32_t kTl3TableBytes = 32;   // per triple: 16 low bytes, 16 high bytes

constexpr uint32_t tl3PaddedK(uint32_t k) { return (k + kTl3BlockElems - 1) / kTl3BlockElems * kTl3BlockElems; }
constexpr uint32_t tl3Blocks(uint32_t k) { return tl3PaddedK(k) / kTl3BlockElems; }
constexpr size_t tl3RowBytes(uint32_t k) { return size_t(tl3Blocks(k)) * kTl3BlockBytes; }
constexpr size_t tl3TensorBytes(uint32_t k, uint32_t nOut) { return tl3RowBytes(k) * nOut + kTl3TrailerBytes; }
constexpr uint32_t tl3Groups(uint32_t nOut) { return (nOut + kTl3GroupRows - 1) / kTl3GroupRows; }
// Bytes of the interleaved in-memory layout, nNeg included.
constexpr size_t tl3InterleavedBytes(uint32_t k, uint32_t nOut) {
  return size_t(tl3Groups(nOut)) * kTl3GroupRows * (tl3RowBytes(k) + sizeof(int32_t));
}
// Bytes of one token's lookup tables.
constexpr size_t tl3TableBytes(uint32_t k) { return size_t(tl3PaddedK(k)) / 3 * kTl3TableBytes; }

// w: [k] values in {-1, 0, +1}; dst: [tl3RowBytes(k)]. Padding triples get m = 0, sign 0.
void tl3PackRow(const int8_t* w, uint32_t k, uint8_t* dst);
// src: [tl3RowBytes(k)]; w: [k]. Throws WeightFormatError (kernels/weight_formats.hpp) for a
// magnitude above 13, naming `row` and the column.
void tl3UnpackRow(const uint8_t* src, uint32_t k, uint32_t row, int8_t* w);
// Scale trailer of a tensor (after nOut rows): write, read (throws WeightFormatError if not finite).
void tl3WriteScale(float scale, uint32_t k, uint32_t nOut, uint8_t* tensor);
float tl3ReadScale(const uint8_t* tensor, uint32_t k, uint32_t nOut);

// On-disk tensor [tl3TensorBytes(k, nOut)] -> interleaved layout dst [tl3InterleavedBytes(k,
// nOut)] (4-byte aligned). Throws WeightFormatError for a magnitude above 13.
void tl3Interleave(const uint8_t* tensor, uint32_t k, uint32_t nOut, uint8_t* dst);

namespace ref {

// Lookup tables of one token: tables [tl3TableBytes(k)] from q [k] (only q[0..k) is read; the
// padding counts as 0).
void tl3Tables(const int8_t* q, uint32_t k, uint8_t* tables);

// Integer core over output rows [rowBegin, rowEnd) (rowBegin a multiple of 64; rowEnd a multiple
// of 64 or nOut):
//   acc[t * accStride + r] = sum_{i<k} w[r][i] * q_t[i]   (exact int32)
// w: interleaved layout (tl3Interleave); tables: [nTok][tableStride] bytes, token t's tables
// (tl3Tables) at t * tableStride.
void gemmTl3(const uint8_t* w, uint32_t k, uint32_t nOut, uint32_t rowBegin, uint32_t rowEnd,
             const uint8_t* tables, size_t tableStride, uint32_t nTok, int32_t* acc,
             size_t accStride);

}  // namespace ref

}  // namespace tern::kernels
