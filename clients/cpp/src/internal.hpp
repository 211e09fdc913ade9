// Internal helpers of crab_rt_client shared by its translation units and its unit tests (not installed).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "crab_rt/client.hpp"

namespace crab_rt::detail {

// Python's repr() of a float: the shortest string that reads back to the same double, in fixed notation for
// decimal exponents -4..15 ("0.0001", "11.0", "1000000000000000.0") and scientific otherwise ("1e-05",
// "1e+16", "1.5e+300"); "NaN", "Infinity", "-Infinity" as json.dumps writes them.
std::string python_float_repr(double value);
// Python's round(value, ndigits): correctly rounded (half to even on the exact binary value).
double python_round(double value, int ndigits);
// A JSON string as Python's json.dumps writes it: ensure_ascii=false escapes only '"', '\\' and control
// characters; ensure_ascii=true also escapes every non-ASCII character as \uXXXX (surrogate pairs above
// U+FFFF). Invalid UTF-8 is written as U+FFFD.
void append_json_string(std::string& out, std::string_view text, bool ensure_ascii);

// The bytes of one sample frame (all channels) of a format.
std::size_t frame_bytes(SampleFormat format, int channels) noexcept;

// A one-line, at most `limit` characters excerpt of a message for error messages (as Python's data[:200]!r).
std::string excerpt(std::string_view text, std::size_t limit);

// A ClientError with this code and message (fatal).
[[noreturn]] void fail(const char* code, std::string message);

}  // namespace crab_rt::detail
