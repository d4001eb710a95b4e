// TORCH_CHECK messages built without iostream number formatting. With torch 2.11's wheels,
// c10::str formatting an integer inside this library crashed the process (SIGSEGV under
// std::ostream::_M_insert<long>) instead of raising; std::to_string does not use iostreams.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace inception_fast {

inline std::string text(const char* s) { return s; }
inline std::string text(const std::string& s) { return s; }
inline std::string text(c10::ScalarType t) { return c10::toString(t); }
inline std::string text(const c10::Device& d) { return d.str(); }

template <typename T, typename = std::enable_if_t<std::is_integral_v<T> || std::is_enum_v<T>>>
std::string text(T value) {
  return std::to_string(static_cast<long long>(value));
}

inline std::string text(c10::IntArrayRef values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(values[i]);
  }
  return out + "]";
}

template <typename... Args>
std::string join_text(const Args&... args) {
  std::string out;
  ((out += text(args)), ...);
  return out;
}

}  // namespace inception_fast

// TORCH_CHECK with the message joined by join_text (evaluated only when the check fails).
#define OP_CHECK(cond, ...) TORCH_CHECK(cond, ::inception_fast::join_text(__VA_ARGS__))
