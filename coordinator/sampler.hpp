// Token sampling from a logits vector: repetition, presence and frequency penalties, top-k, temperature softmax, top-p,
// min-p, then one draw. Reproducible across platforms for a given seed (std::mt19937_64's output
// is fixed by the standard, and the uniform draw is computed here from its 64-bit output).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace tern::coord {

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy argmax (lowest index on ties)
  int topK = 40;             // 0: disabled; < 0 invalid
  float topP = 0.95f;        // in (0, 1]; 1: disabled
  float minP = 0.05f;        // in [0, 1]; keep p >= minP * max p; 0: disabled
  float repeatPenalty = 1.0f;  // > 0; 1: disabled
  int repeatLastN = 64;      // history ids penalised; 0: none, -1: the whole history
  // OpenAI's additive penalties over the same window: logit -= frequencyPenalty * count +
  // presencePenalty * (count > 0), count = occurrences of the id among the last repeatLastN.
  float presencePenalty = 0.0f;   // in [-2, 2]; 0: disabled
  float frequencyPenalty = 0.0f;  // in [-2, 2]; 0: disabled
  uint64_t seed = 0;

  // Throws std::invalid_argument naming the first bad field.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);  // validates

  // logits: [n_vocab]; history: ids generated or prompted so far (oldest first; ids outside
  // [0, n_vocab) are ignored). Returns the chosen id. Throws std::invalid_argument for empty
  // logits or a NaN.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history = {});

  const SamplingParams& params() const { return params_; }

  // Index of the largest value, lowest index on ties; -1 for an empty span.
  static int32_t argmax(std::span<const float> logits);

 private:
  double uniform();  // [0, 1) from 53 bits of one mt19937_64 output

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> logits_;                         // [n_vocab] penalised copy
  std::vector<std::pair<float, int32_t>> candidates_;  // (logit, then probability; id)
};

}  // namespace tern::coord
