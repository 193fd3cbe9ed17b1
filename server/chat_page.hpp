// The chat page served at "/": server/chat.html, embedded into the binary at build time
// (server/embed.py), so `tern serve` needs no files beside the model.
#pragma once

#include <string_view>

namespace tern::server {

std::string_view chatPageHtml();

}  // namespace tern::server
