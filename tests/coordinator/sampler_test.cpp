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
