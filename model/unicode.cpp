#include "model/unicode.hpp"

#include <algorithm>

namespace tern::unicode {
namespace {

bool inRanges(uint32_t cp, const CodepointRange* ranges, size_t n) {
  const CodepointRange* end = ranges + n;
  const CodepointRange* it = std::upper_bound(
      ranges, end, cp, [](uint32_t c, const CodepointRange& r) { return c < r.first; });
  if (it == ranges) return false;
  --it;
  return cp <= it->last;
}

struct ByteTable {
  std::array<uint32_t, 256> cp{};
  std::array<std::string, 256> utf8;
  std::vector<int16_t> inverse;  // [max codepoint + 1] byte or -1

  ByteTable() {
    uint32_t next = 256;
    uint32_t maxCp = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      cp[b] = keep ? static_cast<uint32_t>(b) : next++;
      maxCp = std::max(maxCp, cp[b]);
      appendUtf8(utf8[b], cp[b]);
    }
    inverse.assign(maxCp + 1, -1);
    for (int b = 0; b < 256; ++b) inverse[cp[b]] = static_cast<int16_t>(b);
  }
};

const ByteTable& byteTable() {
  static const ByteTable table;
  return table;
}

}  // namespace

size_t utf8SeqLen(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

std::vector<DecodedChar> decodeUtf8(std::string_view text) {
  std::vector<DecodedChar> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t b0 = s[i];
    const size_t len = utf8SeqLen(b0);
    uint32_t cp = kInvalidCodepoint;
    if (len == 1) {
      if (b0 < 0x80) cp = b0;
    } else if (i + len <= n) {
      bool ok = true;
      uint32_t v = b0 & (0x7F >> len);
      for (size_t k = 1; k < len; ++k) {
        if ((s[i + k] & 0xC0) != 0x80) {
          ok = false;
          break;
        }
        v = (v << 6) | (s[i + k] & 0x3F);
      }
      static constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
      if (ok && v >= kMinForLen[len] && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF)) cp = v;
    }
    if (cp == kInvalidCodepoint) {
      out.push_back({cp, static_cast<uint32_t>(i), 1});
      i += 1;
    } else {
      out.push_back({cp, static_cast<uint32_t>(i), static_cast<uint32_t>(len)});
      i += len;
    }
  }
  return out;
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool isLetter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return inRanges(cp, data::kLetterRanges, data::kLetterRangesCount);
}

bool isNumber(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return inRanges(cp, data::kNumberRanges, data::kNumberRangesCount);
}

bool isSpace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return inRanges(cp, data::kSpaceRanges, data::kSpaceRangesCount);
}

uint32_t byteToCodepoint(uint8_t b) { return byteTable().cp[b]; }

const std::string& byteToUtf8(uint8_t b) { return byteTable().utf8[b]; }

int codepointToByte(uint32_t cp) {
  const auto& inv = byteTable().inverse;
  return cp < inv.size() ? inv[cp] : -1;
}

std::string bytesToUnicode(std::string_view bytes) {
  const ByteTable& t = byteTable();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += t.utf8[static_cast<uint8_t>(c)];
  return out;
}

std::string unicodeToBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const DecodedChar& d : decodeUtf8(text)) {
    const int b = d.cp == kInvalidCodepoint ? -1 : codepointToByte(d.cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(d.offset, d.length));
    }
  }
  return out;
}

}  // namespace tern::unicode
