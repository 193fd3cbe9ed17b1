#include "protocol/address.hpp"

#include <cstdio>
#include <stdexcept>

namespace tern::proto {

HostPort parseHostPort(const std::string& text, unsigned minPort) {
  auto bad = [](const std::string& why) { throw std::invalid_argument(why); };
  HostPort hp;
  size_t colon;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos || close == 1) bad("unterminated or empty [IPv6] host");
    if (close + 1 >= text.size() || text[close + 1] != ':') bad("expected host:port");
    colon = close + 1;
    hp.host = text.substr(1, close - 1);
  } else {
    colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0) bad("expected host:port");
    if (text.find(':') != colon) bad("an IPv6 host must be written [addr]:port");
    hp.host = text.substr(0, colon);
  }
  const std::string port = text.substr(colon + 1);
  const std::string range = "port must be a number in [" + std::to_string(minPort) + ", 65535]";
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    bad(range);
  }
  hp.port = static_cast<unsigned>(std::stoul(port));
  if (hp.port < minPort || hp.port > 65535) bad(range);
  return hp;
}

std::string joinHostPort(const std::string& host, unsigned port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool isLoopbackHost(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1") return true;
  // 127.a.b.c, each part a decimal byte.
  unsigned parts[4];
  char tail = 0;
  if (std::sscanf(host.c_str(), "%u.%u.%u.%u%c", &parts[0], &parts[1], &parts[2], &parts[3], &tail) != 4) {
    return false;
  }
  for (unsigned p : parts) {
    if (p > 255) return false;
  }
  return parts[0] == 127 && host.find_first_not_of("0123456789.") == std::string::npos;
}

void checkPlainLink(const std::string& address, bool insecure, const std::string& what) {
  if (insecure) return;
  HostPort hp;
  try {
    hp = parseHostPort(address);
  } catch (const std::invalid_argument&) {
    return;  // the caller's parser names a malformed address
  }
  if (isLoopbackHost(hp.host)) return;
  throw std::invalid_argument(address + " is not a loopback address: cluster links are plain, "
                              "unauthenticated TCP, so " + what + " another host needs --insecure");
}

}  // namespace tern::proto
