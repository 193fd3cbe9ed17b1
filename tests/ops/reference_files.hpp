// Readers of the reference engines' recorded outputs in tests/data, and small comparisons on
// logits, shared by the ops tests.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace tern::testing {

// Every integer of a text file, skipping lines that start with '#'.
inline std::vector<int32_t> readIdLines(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in);
  std::vector<int32_t> ids;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    int32_t v;
    while (ls >> v) ids.push_back(v);
  }
  return ids;
}

// The integers after "<key> (n):" in an .ids.txt file.
inline std::vector<int32_t> readIdsField(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  REQUIRE(in);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + " ", 0) != 0) continue;
    std::istringstream ls(line.substr(line.find(':') + 1));
    std::vector<int32_t> ids;
    int32_t v;
    while (ls >> v) ids.push_back(v);
    return ids;
  }
  FAIL("no field ", key, " in ", path);
  return {};
}

inline std::vector<float> readF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

inline int32_t argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;  // lowest index on ties
  return int32_t(best);
}

inline float topGap(const float* x, size_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    if (x[i] > a) {
      b = a;
      a = x[i];
    } else if (x[i] > b) {
      b = x[i];
    }
  }
  return a - b;
}

inline float maxAbsDiff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace tern::testing
