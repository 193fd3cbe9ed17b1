#include "coordinator/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace tern::coord {

void SamplingParams::validate() const {
  auto bad = [](const std::string& what) { throw std::invalid_argument("sampling: " + what); };
  if (std::isnan(temperature)) bad("temperature is NaN");
  if (topK < 0) bad("top-k must be >= 0 (0 disables it), got " + std::to_string(topK));
  if (!(topP > 0.0f && topP <= 1.0f)) bad("top-p must be in (0, 1], got " + std::to_string(topP));
  if (!(minP >= 0.0f && minP <= 1.0f)) bad("min-p must be in [0, 1], got " + std::to_string(minP));
  if (!(repeatPenalty > 0.0f) || std::isinf(repeatPenalty))
    bad("repeat penalty must be finite and > 0, got " + std::to_string(repeatPenalty));
  if (repeatLastN < -1)
    bad("repeat-last-n must be >= -1 (-1: whole history), got " + std::to_string(repeatLastN));
  if (!(presencePenalty >= -2.0f && presencePenalty <= 2.0f))
    bad("presence penalty must be in [-2, 2], got " + std::to_string(presencePenalty));
  if (!(frequencyPenalty >= -2.0f && frequencyPenalty <= 2.0f))
    bad("frequency penalty must be in [-2, 2], got " + std::to_string(frequencyPenalty));
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::argmax(std::span<const float> logits) {
  if (logits.empty()) return -1;
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const size_t n = logits.size();
  if (n == 0) throw std::invalid_argument("sampling: empty logits");
  logits_.assign(logits.begin(), logits.end());
  for (float x : logits_)
    if (std::isnan(x)) throw std::invalid_argument("sampling: NaN in logits");

  // Penalties over the last repeatLastN ids of the history. Repetition (llama.cpp's rule: once
  // per distinct id, positive logits divided, negative multiplied, so the token always becomes
  // less likely), then OpenAI's presence and frequency penalties (subtracted).
  const bool repeat = params_.repeatPenalty != 1.0f;
  const bool additive = params_.presencePenalty != 0.0f || params_.frequencyPenalty != 0.0f;
  if ((repeat || additive) && params_.repeatLastN != 0 && !history.empty()) {
    size_t lastN = params_.repeatLastN < 0 ? history.size()
                                           : std::min(history.size(), size_t(params_.repeatLastN));
    std::unordered_map<int32_t, uint32_t> count;
    for (int32_t id : history.subspan(history.size() - lastN)) {
      if (id >= 0 && size_t(id) < n) ++count[id];
    }
    for (const auto& [id, c] : count) {
      float& x = logits_[size_t(id)];
      if (repeat) x = x > 0.0f ? x / params_.repeatPenalty : x * params_.repeatPenalty;
      if (additive) x -= params_.frequencyPenalty * static_cast<float>(c) + params_.presencePenalty;
    }
  }

  if (params_.temperature <= 0.0f) return argmax(logits_);

  // Top-k, candidates ordered by logit (descending), then id (ascending) for determinism.
  candidates_.resize(n);
  for (size_t i = 0; i < n; ++i) candidates_[i] = {logits_[i], static_cast<int32_t>(i)};
  auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  size_t k = params_.topK > 0 ? std::min(n, size_t(params_.topK)) : n;
  std::partial_sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(k), candidates_.end(),
                    before);
  candidates_.resize(k);
  const float maxLogit = candidates_[0].first;
  if (std::isinf(maxLogit) && maxLogit < 0.0f) return candidates_[0].second;  // all -inf

  // Softmax with temperature.
  double sum = 0.0;
  for (auto& c : candidates_) {
    double p = std::exp(static_cast<double>(c.first - maxLogit) / params_.temperature);
    c.first = static_cast<float>(p);
    sum += p;
  }
  for (auto& c : candidates_) c.first = static_cast<float>(c.first / sum);

  // Top-p: the shortest prefix whose probability reaches topP (at least one candidate).
  if (params_.topP < 1.0f) {
    double cum = 0.0;
    size_t keep = candidates_.size();
    for (size_t i = 0; i < candidates_.size(); ++i) {
      cum += candidates_[i].first;
      if (cum >= params_.topP) {
        keep = i + 1;
        break;
      }
    }
    candidates_.resize(keep);
  }

  // Min-p: drop candidates below minP times the best probability.
  if (params_.minP > 0.0f) {
    const float threshold = params_.minP * candidates_[0].first;
    size_t keep = 1;
    while (keep < candidates_.size() && candidates_[keep].first >= threshold) ++keep;
    candidates_.resize(keep);
  }

  double total = 0.0;
  for (const auto& c : candidates_) total += c.first;
  const double u = uniform() * total;
  double cum = 0.0;
  for (const auto& c : candidates_) {
    cum += c.first;
    if (u < cum) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace tern::coord
