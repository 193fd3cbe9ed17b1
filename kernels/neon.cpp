// ARM NEON (Advanced SIMD, ARMv8.0-A) kernels. Compiled with -ffp-contract=off and no -march
// beyond the AArch64 baseline; the float paths use vmulq + vaddq, never vfmaq, so they round
// exactly like the scalar ref. Everything here except the exported functions has internal
// linkage. Layouts: see kernels/t2.hpp.
#include "kernels/simd.hpp"

#if defined(__aarch64__)

#include <arm_neon.h>

#include <cstdint>

namespace tern::kernels::neon {

namespace {

constexpr uint32_t kBlockElems = 128;  // T2 block: 128 weights in 32 bytes
constexpr uint32_t kBlockBytes = 32;

uint32_t t2Blocks(uint32_t k) { return (k + kBlockElems - 1) / kBlockElems; }

// Weights w = c - 1 of plane j (elements 32j + p of a block) from 16 block bytes. Exact for every
// byte value, code 3 (never written) included: it gives 2, as in the ref.
inline int8x16_t planeWeights(uint8x16_t bytes, int j) {
  const uint8x16_t c = vandq_u8(vshlq_u8(bytes, vdupq_n_s8(int8_t(-2 * j))), vdupq_n_u8(3));
  return vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(1));
}

// R rows x T tokens. Per block, each (row, token) pair collects its 128 products w*q in one
// int16x8 (16 products per lane, |w*q| <= 256, so |lane| <= 4096), then widens pairwise into
// int32 (vpadalq), which keeps the sum exact for any k < 2^24.
template <int R, int T>
void tileT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, const int8_t* q, size_t qStride, int32_t* acc,
            size_t accStride) {
  int32x4_t a32[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) a32[r][t] = vdupq_n_s32(0);
  for (uint32_t b = 0; b < nBlocks; ++b) {
    uint8x16_t wb[R][2];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * rowBytes + size_t(b) * kBlockBytes;
      wb[r][0] = vld1q_u8(p);
      wb[r][1] = vld1q_u8(p + 16);
    }
    int16x8_t a16[R][T];
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) {
        int8x16_t qv[T];
        for (int t = 0; t < T; ++t) qv[t] = vld1q_s8(q + t * qStride + size_t(b) * kBlockElems + 32 * j + 16 * h);
        for (int r = 0; r < R; ++r) {
          const int8x16_t wv = planeWeights(wb[r][h], j);
          for (int t = 0; t < T; ++t) {
            if (j == 0 && h == 0)
              a16[r][t] = vmull_s8(vget_low_s8(wv), vget_low_s8(qv[t]));
            else
              a16[r][t] = vmlal_s8(a16[r][t], vget_low_s8(wv), vget_low_s8(qv[t]));
            a16[r][t] = vmlal_high_s8(a16[r][t], wv, qv[t]);
          }
        }
      }
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) a32[r][t] = vpadalq_s16(a32[r][t], a16[r][t]);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[t * accStride + r] = vaddvq_s32(a32[r][t]);
}

template <int R, int T>
void rowsT2(const uint8_t* w, size_t rowBytes, uint32_t nBlocks, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q,
            size_t qStride, int32_t* acc, size_t accStride) {
  uint32_t r = rowBegin;
  for (; r + R <= rowEnd; r += R) tileT2<R, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, acc + r, accStride);
  for (; r < rowEnd; ++r) tileT2<1, T>(w + r * rowBytes, rowBytes, nBlocks, q, qStride, acc + r, accStride);
}

// Float dot products in the ref order (kernels/dot.hpp): 16 lanes = four float32x4 accumulators
// (lanes 0..3, 4..7, 8..11, 12..15), mul then add (never fused), tails add only to their own
// lanes, then the tree sum t[j] += t[j + w] for w = 8, 4, 2, 1.
struct Acc16 {
  float32x4_t v[4];
};

float treeSum(const Acc16& a) {
  const float32x4_t s8lo = vaddq_f32(a.v[0], a.v[2]);  // t[0..3] += t[8..11]
  const float32x4_t s8hi = vaddq_f32(a.v[1], a.v[3]);  // t[4..7] += t[12..15]
  const float32x4_t s4 = vaddq_f32(s8lo, s8hi);
  const float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
  return vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
}

struct LoadF32 {
  using Elem = float;
  static float32x4_t load4(const float* p) { return vld1q_f32(p); }
};
struct LoadF16 {
  using Elem = uint16_t;
  // FCVTL: exact for every fp16 value, subnormals included (FPCR.FZ16 is off on Linux).
  static float32x4_t load4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
};
struct LoadBf16 {
  using Elem = uint16_t;
  static float32x4_t load4(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
};

template <class L, int R, int T>
void tileFloat(const typename L::Elem* w, uint32_t k, const float* x, size_t xStride, float* y, size_t yStride) {
  Acc16 a[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < 4; ++g) a[r][t].v[g] = vdupq_n_f32(0.0f);
  uint32_t i = 0;
  for (; i + 16 <= k; i += 16)
    for (int g = 0; g < 4; ++g) {
      float32x4_t xv[T];
      for (int t = 0; t < T; ++t) xv[t] = vld1q_f32(x + t * xStride + i + 4 * g);
      for (int r = 0; r < R; ++r) {
        const float32x4_t wv = L::load4(w + size_t(r) * k + i + 4 * g);
        for (int t = 0; t < T; ++t) a[r][t].v[g] = vaddq_f32(a[r][t].v[g], vmulq_f32(wv, xv[t]));
      }
    }
  if (i < k) {
    // Zero-padded copies of the tail; lanes past it keep their old value (a + 0 * x could turn
    // -0 into +0, or give NaN for an infinite x).
    const uint32_t n = k - i;
    float xb[T][16];
    for (int t = 0; t < T; ++t)
      for (uint32_t j = 0; j < 16; ++j) xb[t][j] = j < n ? x[t * xStride + i + j] : 0.0f;
    const uint32_t laneIds[4] = {0, 1, 2, 3};
    const uint32x4_t ids = vld1q_u32(laneIds);
    for (int r = 0; r < R; ++r) {
      typename L::Elem wb[16];
      for (uint32_t j = 0; j < 16; ++j) wb[j] = j < n ? w[size_t(r) * k + i + j] : typename L::Elem(0);
      for (int g = 0; g < 4; ++g) {
        const uint32x4_t live = vcltq_u32(vaddq_u32(ids, vdupq_n_u32(4 * g)), vdupq_n_u32(n));
        const float32x4_t wv = L::load4(wb + 4 * g);
        for (int t = 0; t < T; ++t) {
          const float32x4_t s = vaddq_f32(a[r][t].v[g], vmulq_f32(wv, vld1q_f32(xb[t] + 4 * g)));
          a[r][t].v[g] = vbslq_f32(live, s, a[r][t].v[g]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * yStride + r] = treeSum(a[r][t]);
}

template <class L, int T>
void rowsFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
               size_t xStride, float* y, size_t yStride) {
  constexpr int kRows = T == 1 ? 4 : 2;
  uint32_t r = rowBegin;
  for (; r + kRows <= rowEnd; r += kRows) tileFloat<L, kRows, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
  for (; r < rowEnd; ++r) tileFloat<L, 1, T>(w + size_t(r) * k, k, x, xStride, y + r, yStride);
}

template <class L>
void matmulFloat(const typename L::Elem* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x,
                 size_t xStride, uint32_t nTok, float* y, size_t yStride) {
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2)
    rowsFloat<L, 2>(w, k, rowBegin, rowEnd, x + t * xStride, xStride, y + t * yStride, yStride);
  if (t < nTok) rowsFloat<L, 1>(w, k, rowBegin, rowEnd, x + t * xStride, xStride, y + t * yStride, yStride);
}

// The ref's scalar quantisation step (kernels/quantize.cpp), for the tail.
int32_t quantizeOne(float x, float aScale) {
  const float p = x * aScale;
  const float lo = -128.0f < p ? p : -128.0f;
  const float v = lo < 127.0f ? lo : 127.0f;
  constexpr float kMagic = 12582912.0f;
  return int32_t((v + kMagic) - kMagic);
}

}  // namespace

float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ) {
  // Compare-and-select keeps the running max when |x| is NaN, like the ref's std::max(acc, |x|)
  // (vmaxq would propagate the NaN, vmaxnmq would not ignore a signalling one).
  float32x4_t mx[4];
  for (auto& m : mx) m = vdupq_n_f32(0.0f);
  uint32_t i = 0;
  for (; i + 16 <= k; i += 16)
    for (int g = 0; g < 4; ++g) {
      const float32x4_t a = vabsq_f32(vld1q_f32(x + i + 4 * g));
      mx[g] = vbslq_f32(vcgtq_f32(a, mx[g]), a, mx[g]);
    }
  float maxAbs = vmaxvq_f32(vmaxq_f32(vmaxq_f32(mx[0], mx[1]), vmaxq_f32(mx[2], mx[3])));
  for (; i < k; ++i) {
    const float a = __builtin_fabsf(x[i]);
    maxAbs = maxAbs < a ? a : maxAbs;
  }
  const double m = double(maxAbs) > 1e-5 ? double(maxAbs) : 1e-5;
  const float aScale = float(127.0 / m);

  const float32x4_t s = vdupq_n_f32(aScale), lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
  int32x4_t sum = vdupq_n_s32(0);
  for (i = 0; i + 16 <= k; i += 16) {
    int32x4_t v[4];
    for (int g = 0; g < 4; ++g) {
      const float32x4_t p = vmulq_f32(vld1q_f32(x + i + 4 * g), s);
      const float32x4_t c = vminq_f32(vbslq_f32(vcltq_f32(lo, p), p, lo), hi);  // NaN -> -128
      v[g] = vcvtnq_s32_f32(c);  // round to nearest, ties to even
      sum = vaddq_s32(sum, v[g]);
    }
    const int16x8_t h0 = vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1]));
    const int16x8_t h1 = vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]));
    vst1q_s8(q + i, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
  }
  int32_t total = vaddvq_s32(sum);
  for (; i < k; ++i) {
    const int32_t qi = quantizeOne(x[i], aScale);
    q[i] = int8_t(qi);
    total += qi;
  }
  *sumQ = total;
  return aScale;
}

void gemmT2(const uint8_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const int8_t* q, size_t qStride,
            uint32_t nTok, int32_t* acc, size_t accStride) {
  const uint32_t nBlocks = t2Blocks(k);
  const size_t rowBytes = size_t(nBlocks) * kBlockBytes;
  uint32_t t = 0;
  for (; t + 2 <= nTok; t += 2)
    rowsT2<2, 2>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
  if (t < nTok)
    rowsT2<4, 1>(w, rowBytes, nBlocks, rowBegin, rowEnd, q + t * qStride, qStride, acc + t * accStride, accStride);
}

void matmulF32(const float* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x, size_t xStride,
               uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadF32>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

void matmulF16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x, size_t xStride,
               uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadF16>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

void matmulBf16(const uint16_t* w, uint32_t k, uint32_t rowBegin, uint32_t rowEnd, const float* x, size_t xStride,
                uint32_t nTok, float* y, size_t yStride) {
  matmulFloat<LoadBf16>(w, k, rowBegin, rowEnd, x, xStride, nTok, y, yStride);
}

float dotF32(const float* a, const float* b, uint32_t n) {
  float y;
  tileFloat<LoadF32, 1, 1>(a, n, b, 0, &y, 0);
  return y;
}

}  // namespace tern::kernels::neon

#endif  // __aarch64__
