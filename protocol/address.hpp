// Addresses of tern's processes on the wire: "host:port", "[IPv6]:port". One parser for what
// workers listen on (--listen), what the coordinator dials (--workers, NextHop.remote) and the
// metrics endpoints.
#pragma once

#include <string>

namespace tern::proto {

struct HostPort {
  std::string host;  // without the brackets of an IPv6 literal
  unsigned port = 0;
};

// Throws std::invalid_argument with the reason alone (the caller names the flag or entry):
// "expected host:port", "unterminated or empty [IPv6] host", "an IPv6 host must be written
// [addr]:port", "port must be a number in [minPort, 65535]".
HostPort parseHostPort(const std::string& text, unsigned minPort = 0);

// "host:port", with brackets around an IPv6 host.
std::string joinHostPort(const std::string& host, unsigned port);

// A loopback host: 127.0.0.0/8 written as a dotted quad, ::1, or "localhost". Names are not
// resolved: any other name is not loopback.
bool isLoopbackHost(const std::string& host);

// Cluster links are plain, unauthenticated TCP: allowed on loopback, elsewhere only when the
// user said --insecure. Throws std::invalid_argument("ADDRESS is not a loopback address: ...")
// for "host:port" otherwise (what = "listening on" / "dialling").
void checkPlainLink(const std::string& address, bool insecure, const std::string& what);

}  // namespace tern::proto
