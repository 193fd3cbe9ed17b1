#include "coordinator/sampler.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

using tern::coord::Sampler;
using tern::coord::SamplingParams;

namespace {

SamplingParams plain(float temperature, uint64_t seed = 7) {
  SamplingParams p;
  p.temperature = temperature;
  p.topK = 0;
  p.topP = 1.0f;
  p.minP = 0.0f;
  p.seed = seed;
  return p;
}

std::vector<float> randomLogits(uint64_t seed, size_t n) {
  std::vector<float> v(n);
  uint64_t s = seed;
  for (float& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<float>((s >> 40) % 1000) / 100.0f - 5.0f;
  }
  return v;
}

// Draws `n` ids and returns how often each of the first `m` ids came out.
std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int n, size_t m) {
  std::vector<double> f(m, 0.0);
  for (int i = 0; i < n; ++i) {
    int32_t id = s.sample(logits);
    REQUIRE(id >= 0);
    REQUIRE(size_t(id) < m);
    f[size_t(id)] += 1.0 / n;
  }
  return f;
}

}  // namespace

TEST_CASE("sampler: greedy is argmax, lowest index on ties") {
  Sampler s(plain(0.0f));
  std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f};
  CHECK(s.sample(logits) == 1);
  CHECK(Sampler::argmax(std::vector<float>{-5.0f, -1.0f, -1.0f}) == 1);
  CHECK(Sampler::argmax(std::vector<float>{}) == -1);
  SamplingParams neg = plain(-1.0f);
  Sampler s2(neg);
  CHECK(s2.sample(std::vector<float>{0.5f, 0.25f, 0.75f}) == 2);
}

TEST_CASE("sampler: same seed gives the same sequence, another seed another one") {
  SamplingParams p;  // defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05
  p.seed = 1234;
  p.minP = 0.0f;
  Sampler a(p), b(p);
  p.seed = 1235;
  Sampler c(p);
  int differ = 0;
  for (uint64_t step = 0; step < 200; ++step) {
    auto logits = randomLogits(step, 100);
    int32_t x = a.sample(logits), y = b.sample(logits), z = c.sample(logits);
    CHECK(x == y);
    differ += x != z;
  }
  CHECK(differ > 0);
}

TEST_CASE("sampler: top-k = 1 and a tiny top-p both give the argmax") {
  SamplingParams k1 = plain(1.5f);
  k1.topK = 1;
  SamplingParams p0 = plain(1.5f);
  p0.topP = 1e-6f;
  Sampler a(k1), b(p0);
  for (uint64_t step = 0; step < 50; ++step) {
    auto logits = randomLogits(100 + step, 37);
    int32_t best = Sampler::argmax(logits);
    CHECK(a.sample(logits) == best);
    CHECK(b.sample(logits) == best);
  }
}

TEST_CASE("sampler: min-p keeps only tokens with p >= min-p * max p") {
  // p = {0.5, 0.3, 0.15, 0.05}; min-p 0.35 gives threshold 0.175: ids 0 and 1 survive,
  // renormalised to 0.625 / 0.375.
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = plain(1.0f, 99);
  p.minP = 0.35f;
  Sampler s(p);
  auto f = frequencies(s, logits, 4000, 4);
  CHECK(f[2] == 0.0);
  CHECK(f[3] == 0.0);
  CHECK(f[0] == doctest::Approx(0.625).epsilon(0.06));
  CHECK(f[1] == doctest::Approx(0.375).epsilon(0.08));
}

TEST_CASE("sampler: top-p keeps the shortest prefix reaching p") {
  // p = {0.5, 0.3, 0.15, 0.05}: top-p 0.7 keeps ids 0 and 1 (0.5 < 0.7 <= 0.8).
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = plain(1.0f, 5);
  p.topP = 0.7f;
  Sampler s(p);
  auto f = frequencies(s, logits, 4000, 4);
  CHECK(f[2] == 0.0);
  CHECK(f[3] == 0.0);
  CHECK(f[1] > 0.3);
}

TEST_CASE("sampler: repetition penalty") {
  SamplingParams p = plain(0.0f);
  p.repeatPenalty = 1.5f;
  p.repeatLastN = 2;
  Sampler s(p);
  // Positive logit divided: 2.0 / 1.5 = 1.33 < 1.8.
  std::vector<float> pos = {2.0f, 1.8f, -1.0f};
  CHECK(s.sample(pos) == 0);
  CHECK(s.sample(pos, std::vector<int32_t>{0}) == 1);
  // Negative logit multiplied: -1.0 * 1.5 = -1.5 < -1.2.
  std::vector<float> neg = {-1.0f, -1.2f};
  CHECK(s.sample(neg, std::vector<int32_t>{0}) == 1);
  // Only the last 2 ids count; repeats of one id are penalised once; out-of-range ids ignored.
  CHECK(s.sample(pos, std::vector<int32_t>{0, 2, 2}) == 0);
  CHECK(s.sample(pos, std::vector<int32_t>{0, 0, 7, -3}) == 0);
  CHECK(s.sample(pos, std::vector<int32_t>{0, 0}) == 1);
  p.repeatLastN = -1;
  Sampler all(p);
  CHECK(all.sample(pos, std::vector<int32_t>{0, 2, 2, 2}) == 1);
}

TEST_CASE("sampler: empirical frequencies match the softmax") {
  std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  SUBCASE("temperature 1") {
    Sampler s(plain(1.0f, 2024));
    auto f = frequencies(s, logits, 20000, 3);
    CHECK(std::abs(f[0] - 0.6) < 0.02);
    CHECK(std::abs(f[1] - 0.3) < 0.02);
    CHECK(std::abs(f[2] - 0.1) < 0.02);
  }
  SUBCASE("temperature 2: p proportional to sqrt(p)") {
    Sampler s(plain(2.0f, 77));
    auto f = frequencies(s, logits, 20000, 3);
    const double z = std::sqrt(0.6) + std::sqrt(0.3) + std::sqrt(0.1);
    CHECK(std::abs(f[0] - std::sqrt(0.6) / z) < 0.02);
    CHECK(std::abs(f[1] - std::sqrt(0.3) / z) < 0.02);
    CHECK(std::abs(f[2] - std::sqrt(0.1) / z) < 0.02);
  }
}

TEST_CASE("sampler: -inf logits are never drawn") {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> logits = {ninf, 0.0f, ninf, 0.0f};
  Sampler s(plain(1.0f, 3));
  auto f = frequencies(s, logits, 1000, 4);
  CHECK(f[0] == 0.0);
  CHECK(f[2] == 0.0);
  CHECK(f[1] > 0.4);
}

TEST_CASE("sampler: invalid parameters and inputs") {
  auto with = [](auto change) {
    SamplingParams p;
    change(p);
    return p;
  };
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.topK = -1; })), std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.topP = 0.0f; })), std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.topP = 1.5f; })), std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.minP = -0.1f; })), std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.repeatPenalty = 0.0f; })),
                  std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.repeatLastN = -2; })),
                  std::invalid_argument);
  CHECK_THROWS_AS(Sampler(with([](SamplingParams& p) { p.temperature = std::nanf(""); })),
                  std::invalid_argument);
  Sampler s{SamplingParams{}};
  CHECK_THROWS_AS(s.sample(std::vector<float>{}), std::invalid_argument);
  CHECK_THROWS_AS(s.sample(std::vector<float>{1.0f, std::nanf("")}), std::invalid_argument);
}

namespace {

// Whether the logit of `id` after the penalties lies within (v - 1e-3, v + 1e-3): greedy picks
// `id` over a probe id at v - 1e-3 and the probe at v + 1e-3 (every other logit is -100).
bool penalisedNear(SamplingParams p, float base, int32_t id, std::vector<int32_t> history, float v) {
  p.temperature = 0.0f;
  constexpr int32_t probe = 7;
  std::vector<float> logits(8, -100.0f);
  logits[size_t(id)] = base;
  Sampler s(p);
  logits[probe] = v - 1e-3f;
  const bool above = s.sample(logits, history) == id;
  logits[probe] = v + 1e-3f;
  const bool below = s.sample(logits, history) == probe;
  return above && below;
}

// The penalties as documented, applied by hand: repetition once per distinct id, then
// logit -= frequency * count + presence, over the last repeatLastN ids.
std::vector<float> penalisedByHand(std::vector<float> logits, const std::vector<int32_t>& history,
                                   const SamplingParams& p) {
  const size_t lastN = p.repeatLastN < 0 ? history.size() : std::min(history.size(), size_t(p.repeatLastN));
  std::vector<uint32_t> count(logits.size(), 0);
  for (size_t i = history.size() - lastN; i < history.size(); ++i) {
    if (history[i] >= 0 && size_t(history[i]) < logits.size()) ++count[size_t(history[i])];
  }
  for (size_t id = 0; id < logits.size(); ++id) {
    if (count[id] == 0) continue;
    float& x = logits[id];
    if (p.repeatPenalty != 1.0f) x = x > 0.0f ? x / p.repeatPenalty : x * p.repeatPenalty;
    if (p.presencePenalty != 0.0f || p.frequencyPenalty != 0.0f) {
      x -= p.frequencyPenalty * static_cast<float>(count[id]) + p.presencePenalty;
    }
  }
  return logits;
}

}  // namespace

TEST_CASE("sampler: presence and frequency penalties, hand-computed, within the window only") {
  SamplingParams f = plain(0.0f);
  f.frequencyPenalty = 0.5f;
  const std::vector<int32_t> h = {3, 1, 3, 3};
  CHECK(penalisedNear(f, 2.0f, 3, h, 2.0f - 3 * 0.5f));  // 3 occurrences
  CHECK(penalisedNear(f, 2.0f, 1, h, 2.0f - 0.5f));      // 1 occurrence
  CHECK(penalisedNear(f, 2.0f, 2, h, 2.0f));             // absent: untouched
  CHECK(!penalisedNear(f, 2.0f, 3, h, 2.0f - 0.5f));     // the check can fail
  SamplingParams pr = plain(0.0f);
  pr.presencePenalty = 0.7f;
  CHECK(penalisedNear(pr, 2.0f, 3, h, 2.0f - 0.7f));  // once, whatever the count
  CHECK(penalisedNear(pr, 2.0f, 1, h, 2.0f - 0.7f));
  CHECK(penalisedNear(pr, 2.0f, 2, h, 2.0f));
  SamplingParams both = f;
  both.presencePenalty = 0.7f;
  CHECK(penalisedNear(both, 2.0f, 3, h, 2.0f - 1.5f - 0.7f));
  CHECK(penalisedNear(both, -1.0f, 1, h, -1.0f - 0.5f - 0.7f));
  // Negative penalties make repeats more likely.
  SamplingParams neg = plain(0.0f);
  neg.frequencyPenalty = -0.5f;
  neg.presencePenalty = -2.0f;
  CHECK(penalisedNear(neg, 2.0f, 3, h, 2.0f + 1.5f + 2.0f));
  // Only the last repeatLastN ids count; -1: the whole history; 0: none.
  const std::vector<int32_t> w = {3, 3, 3, 1, 3};
  SamplingParams last2 = both;
  last2.repeatLastN = 2;
  CHECK(penalisedNear(last2, 2.0f, 3, w, 2.0f - 0.5f - 0.7f));  // once among {1, 3}
  CHECK(penalisedNear(last2, 2.0f, 1, w, 2.0f - 0.5f - 0.7f));
  SamplingParams all = both;
  all.repeatLastN = -1;
  CHECK(penalisedNear(all, 2.0f, 3, w, 2.0f - 4 * 0.5f - 0.7f));
  SamplingParams none = both;
  none.repeatLastN = 0;
  CHECK(penalisedNear(none, 2.0f, 3, w, 2.0f));
  // Ids outside the vocabulary are ignored.
  CHECK(penalisedNear(both, 2.0f, 3, {3, 99, -1, 8}, 2.0f - 0.5f - 0.7f));
  // After the repetition penalty: divided (positive) or multiplied (negative), then subtracted.
  SamplingParams rep = both;
  rep.repeatPenalty = 2.0f;
  CHECK(penalisedNear(rep, 2.0f, 3, h, 2.0f / 2.0f - 1.5f - 0.7f));
  CHECK(penalisedNear(rep, -1.0f, 1, h, -1.0f * 2.0f - 0.5f - 0.7f));
}

TEST_CASE("sampler: penalties on random cases are exactly the documented rule; 0 penalties change nothing") {
  // A sampler with penalties draws what a penalty-free sampler with the same seed draws from
  // the logits penalised by hand (same float operations: bit-identical), through top-k, top-p,
  // min-p and temperature.
  for (const auto& [presence, frequency, repeat] :
       {std::array<float, 3>{0.0f, 0.0f, 1.1f}, {0.0f, 0.0f, 1.0f}, {0.6f, 0.0f, 1.0f},
        {0.0f, -0.4f, 1.0f}, {1.3f, 0.8f, 1.2f}, {-0.0f, -0.0f, 1.1f}}) {
    CAPTURE(presence);
    CAPTURE(frequency);
    CAPTURE(repeat);
    SamplingParams p;
    p.seed = 4242;
    p.temperature = 1.3f;
    p.minP = 0.01f;
    p.repeatLastN = 24;
    p.repeatPenalty = repeat;
    p.presencePenalty = presence;
    p.frequencyPenalty = frequency;
    SamplingParams free = p;
    free.repeatPenalty = 1.0f;
    free.presencePenalty = 0.0f;
    free.frequencyPenalty = 0.0f;
    Sampler withPenalties(p), byHand(free);
    std::vector<int32_t> history;
    int differ = 0;
    Sampler unpenalised(free);
    for (uint64_t step = 0; step < 300; ++step) {
      auto logits = randomLogits(9000 + step, 40);
      const int32_t got = withPenalties.sample(logits, history);
      CHECK(got == byHand.sample(penalisedByHand(logits, history, p), history));
      differ += got != unpenalised.sample(logits, history);
      history.push_back(got);
    }
    // The penalties do something (the random histories repeat ids).
    if (presence != 0.0f || frequency != 0.0f || repeat != 1.0f) CHECK(differ > 0);
  }
  // 0 penalties: the same draws as penalties left at their defaults (absent).
  SamplingParams absent;
  absent.seed = 99;
  absent.repeatPenalty = 1.1f;
  SamplingParams zero = absent;
  zero.presencePenalty = 0.0f;
  zero.frequencyPenalty = -0.0f;
  Sampler a(absent), z(zero);
  std::vector<int32_t> history;
  for (uint64_t step = 0; step < 300; ++step) {
    auto logits = randomLogits(step, 64);
    const int32_t x = a.sample(logits, history);
    CHECK(x == z.sample(logits, history));
    history.push_back(x);
  }
}

TEST_CASE("sampler: presence and frequency penalties must be in [-2, 2]") {
  auto with = [](float presence, float frequency) {
    SamplingParams p;
    p.presencePenalty = presence;
    p.frequencyPenalty = frequency;
    return p;
  };
  CHECK_NOTHROW(Sampler(with(2.0f, -2.0f)));
  CHECK_NOTHROW(Sampler(with(-2.0f, 2.0f)));
  CHECK_THROWS_WITH_AS(Sampler(with(2.5f, 0.0f)), "sampling: presence penalty must be in [-2, 2], got 2.500000",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(Sampler(with(-2.01f, 0.0f)), "sampling: presence penalty must be in [-2, 2], got -2.010000",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(Sampler(with(0.0f, 3.0f)), "sampling: frequency penalty must be in [-2, 2], got 3.000000",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(Sampler(with(0.0f, std::nanf(""))), "sampling: frequency penalty must be in [-2, 2], got nan",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(Sampler(with(std::numeric_limits<float>::infinity(), 0.0f)),
                       "sampling: presence penalty must be in [-2, 2], got inf", std::invalid_argument);
  CHECK_THROWS_AS(with(0.0f, -2.5f).validate(), std::invalid_argument);
}
