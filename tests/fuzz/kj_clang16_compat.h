// kj_clang16_compat.h — lets Debian 12's Cap'n Proto 0.9 headers compile with clang >= 16 in
// C++20; force-included (-include) by scripts/fuzz.sh into the fuzz build only.
//
// kj::StringPtr and kj::String declare both operator== and operator!= as members, and in C++20
// mode KJ leaves out the free `const char* == StringPtr` overloads, counting on the reversed
// (rewritten) candidate. Clang 16 implements P2468, under which a class with a matching
// operator!= gets no reversed operator== candidates, so capnp/blob.h's
// `a == b.asString()` (a: const char*) no longer compiles. Cap'n Proto 0.10 fixed it upstream by
// declaring the free overloads again; this declares the same ones. GCC 12 (the normal build) and
// clang < 16 do not need it, and it does nothing there.
#pragma once

#if defined(__cplusplus) && defined(__clang__) && __clang_major__ >= 16 && \
    defined(__cpp_impl_three_way_comparison) && __has_include(<kj/string.h>)
#include <kj/string.h>

namespace kj {
inline bool operator==(const char* a, const StringPtr& b) { return b == StringPtr(a); }
inline bool operator!=(const char* a, const StringPtr& b) { return b != StringPtr(a); }
inline bool operator==(const char* a, const String& b) { return b == StringPtr(a); }
inline bool operator!=(const char* a, const String& b) { return b != StringPtr(a); }
}  // namespace kj
#endif
