// Per-token int8 activation quantisation (BitNet b1.58 numerics, formats.md section 1).
#pragma once

#include <cstdint>

namespace tern::kernels::ref {

// x: [k] floats -> q: [k] int8. m = max(1e-5, max_i |x_i|); returns a_s = (float)(127 / m) (the
// division in double); q_i = round_half_to_even(x_i * a_s) (product in float) clamped to
// [-128, 127]; *sumQ = sum_i q_i. Non-finite inputs give unspecified q but no undefined behaviour.
float quantizeRow(const float* x, uint32_t k, int8_t* q, int32_t* sumQ);

}  // namespace tern::kernels::ref
