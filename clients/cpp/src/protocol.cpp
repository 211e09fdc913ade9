// The protocol's data, without any networking: URL and option checks, the `start` message, PCM encoding,
// parsing the server's messages, and writing events as `crab-rt client`'s JSON lines (Python's formatting).
#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "crab_rt/client.hpp"
#include "internal.hpp"

#ifndef CRAB_RT_CLIENT_VERSION
#define CRAB_RT_CLIENT_VERSION "0.0.0"
#endif

namespace crab_rt {

using json = nlohmann::ordered_json;  // keeps the server's key order (labels, latency stages)

const char* version() noexcept { return CRAB_RT_CLIENT_VERSION; }

const char* to_string(SampleFormat format) noexcept {
    return format == SampleFormat::s16le ? "s16le" : format == SampleFormat::f32le ? "f32le" : "?";
}

const char* to_string(SendStatus status) noexcept {
    switch (status) {
        case SendStatus::queued: return "queued";
        case SendStatus::dropped: return "dropped";
        case SendStatus::not_accepting: return "not_accepting";
        case SendStatus::bad_audio: return "bad_audio";
    }
    return "?";
}

const char* to_string(State state) noexcept {
    switch (state) {
        case State::idle: return "idle";
        case State::connecting: return "connecting";
        case State::streaming: return "streaming";
        case State::finishing: return "finishing";
        case State::closed: return "closed";
    }
    return "?";
}

ClientError::ClientError(Error error) : std::runtime_error(error.message), error_(std::move(error)) {}

namespace detail {

[[noreturn]] void fail(const char* code, std::string message) {
    Error e;
    e.code = code;
    e.message = std::move(message);
    e.fatal = true;
    throw ClientError(std::move(e));
}

std::size_t frame_bytes(SampleFormat format, int channels) noexcept {
    return static_cast<std::size_t>(channels > 0 ? channels : 1) * (format == SampleFormat::s16le ? 2u : 4u);
}

std::string python_float_repr(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
    std::array<char, 64> buf{};
    // The shortest digits that read back to the same double (as Python's repr), in scientific form.
    auto res = std::to_chars(buf.data(), buf.data() + buf.size(), value, std::chars_format::scientific);
    std::string s(buf.data(), res.ptr);
    std::string out;
    if (!s.empty() && s[0] == '-') {
        out += '-';
        s.erase(0, 1);
    }
    const auto e = s.find('e');
    std::string mantissa = s.substr(0, e);
    const int exp10 = std::stoi(s.substr(e + 1));
    std::string digits;
    for (char c : mantissa)
        if (c != '.') digits += c;
    if (exp10 < -4 || exp10 >= 16) {  // Python: decpt <= -4 or decpt > 16, with decpt = exp10 + 1
        out += digits[0];
        if (digits.size() > 1) {
            out += '.';
            out.append(digits, 1, std::string::npos);
        }
        out += 'e';
        out += exp10 < 0 ? '-' : '+';
        const int a = std::abs(exp10);
        if (a < 10) out += '0';
        out += std::to_string(a);
        return out;
    }
    if (exp10 >= 0) {
        const std::size_t int_digits = static_cast<std::size_t>(exp10) + 1;
        if (digits.size() <= int_digits) {
            out += digits;
            out.append(int_digits - digits.size(), '0');
            out += ".0";
        } else {
            out.append(digits, 0, int_digits);
            out += '.';
            out.append(digits, int_digits, std::string::npos);
        }
    } else {
        out += "0.";
        out.append(static_cast<std::size_t>(-exp10 - 1), '0');
        out += digits;
    }
    return out;
}

double python_round(double value, int ndigits) {
    if (!std::isfinite(value)) return value;
    std::array<char, 400> buf{};
    // Exact decimal expansion rounded half to even, as Python's round (dtoa mode 3), then read back.
    auto res = std::to_chars(buf.data(), buf.data() + buf.size(), value, std::chars_format::fixed, ndigits);
    if (res.ec != std::errc()) return value;
    double out = value;
    std::from_chars(buf.data(), res.ptr, out);
    return out;
}

namespace {

// Decodes one UTF-8 sequence at text[i]; returns the code point (U+FFFD for an invalid sequence) and advances i.
char32_t next_code_point(std::string_view text, std::size_t& i) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + static_cast<std::size_t>(len) > text.size()) {
        ++i;
        return 0xFFFD;
    }
    char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    for (int k = 1; k < len; ++k) {
        const auto b = static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]);
        if ((b >> 6) != 0x2) {
            ++i;
            return 0xFFFD;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    const char32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        ++i;
        return 0xFFFD;
    }
    i += static_cast<std::size_t>(len);
    return cp;
}

void append_u_escape(std::string& out, unsigned value) {
    static const char hex[] = "0123456789abcdef";
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(value >> shift) & 0xF];
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

}  // namespace

void append_json_string(std::string& out, std::string_view text, bool ensure_ascii) {
    out += '"';
    std::size_t i = 0;
    while (i < text.size()) {
        const char32_t cp = next_code_point(text, i);
        switch (cp) {
            case U'"': out += "\\\""; continue;
            case U'\\': out += "\\\\"; continue;
            case U'\n': out += "\\n"; continue;
            case U'\r': out += "\\r"; continue;
            case U'\t': out += "\\t"; continue;
            case U'\b': out += "\\b"; continue;
            case U'\f': out += "\\f"; continue;
            default: break;
        }
        if (cp < 0x20) {
            append_u_escape(out, static_cast<unsigned>(cp));
        } else if (ensure_ascii && cp > 0x7E) {
            if (cp >= 0x10000) {
                const char32_t v = cp - 0x10000;
                append_u_escape(out, static_cast<unsigned>(0xD800 | (v >> 10)));
                append_u_escape(out, static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
            } else {
                append_u_escape(out, static_cast<unsigned>(cp));
            }
        } else {
            append_utf8(out, cp);
        }
    }
    out += '"';
}

std::string excerpt(std::string_view text, std::size_t limit) {
    std::string out;
    const bool cut = text.size() > limit;
    append_json_string(out, cut ? text.substr(0, limit) : text, true);
    if (cut) out += "...";
    return out;
}

}  // namespace detail

using detail::fail;

// ---- URL and options ---------------------------------------------------------------------------------------

std::string Url::address() const {
    const std::string p = std::to_string(port);
    return host.find(':') != std::string::npos ? "[" + host + "]:" + p : host + ":" + p;
}

Url parse_url(const std::string& url) {
    auto invalid = [&]() -> Url {
        std::string quoted;
        detail::append_json_string(quoted, url, true);
        quoted = "'" + quoted.substr(1, quoted.size() - 2) + "'";
        fail("invalid_url", "invalid server URL " + quoted + ": expected ws://HOST:PORT/ or wss://HOST:PORT/");
    };
    for (unsigned char c : url)
        if (c <= 0x20 || c == 0x7F) return invalid();
    const auto sep = url.find("://");
    if (sep == std::string::npos) return invalid();
    std::string scheme = url.substr(0, sep);
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
    Url out;
    if (scheme == "ws") {
        out.tls = false;
    } else if (scheme == "wss") {
        out.tls = true;
    } else {
        return invalid();
    }
    std::string rest = url.substr(sep + 3);
    if (const auto hash = rest.find('#'); hash != std::string::npos) rest.erase(hash);
    const auto path_at = rest.find_first_of("/?");
    std::string netloc = rest.substr(0, path_at);
    std::string target = path_at == std::string::npos ? "/" : rest.substr(path_at);
    if (!target.empty() && target[0] == '?') target = "/" + target;
    if (const auto at = netloc.rfind('@'); at != std::string::npos) netloc.erase(0, at + 1);
    std::string host, port;
    if (!netloc.empty() && netloc[0] == '[') {
        const auto close = netloc.find(']');
        if (close == std::string::npos) return invalid();
        host = netloc.substr(1, close - 1);
        const std::string after = netloc.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') return invalid();
            port = after.substr(1);
        }
        if (host.empty() || host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos) return invalid();
    } else {
        const auto colon = netloc.find(':');
        host = netloc.substr(0, colon);
        if (colon != std::string::npos) port = netloc.substr(colon + 1);
        if (host.find_first_of("[]") != std::string::npos) return invalid();
    }
    if (host.empty()) return invalid();
    std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
    out.host = host;
    if (port.empty()) {
        out.port = out.tls ? 443 : 80;
    } else {
        if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return invalid();
        const int p = std::stoi(port);
        if (p < 1 || p > 65535) return invalid();
        out.port = static_cast<std::uint16_t>(p);
    }
    out.target = target;
    return out;
}

namespace {

std::string repr(const std::string& s) {
    std::string out;
    detail::append_json_string(out, s, true);
    return "'" + out.substr(1, out.size() - 2) + "'";
}

bool valid_stream_id(const std::string& s) {
    if (s.empty() || s.size() > 64 || !std::isalnum(static_cast<unsigned char>(s[0]))) return false;
    for (unsigned char c : s)
        if (!(c < 0x80 && (std::isalnum(c) || std::strchr("_.:@-", c) != nullptr))) return false;
    return true;
}

bool valid_language(const std::string& s) {
    if (s.size() < 2 || s.size() > 3) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

}  // namespace

void validate_options(const Options& o) {
    const Url url = parse_url(o.url);
    auto bad = [](const std::string& what) { fail("invalid_option", "invalid stream option: " + what); };
    if (o.sample_rate < 8000 || o.sample_rate > 192000)
        bad("start.sample_rate = " + std::to_string(o.sample_rate) + ": must be an integer in [8000, 192000]");
    if (o.format != SampleFormat::s16le && o.format != SampleFormat::f32le)
        bad("start.format = " + std::to_string(static_cast<int>(o.format)) + ": must be one of s16le, f32le");
    if (o.channels < 1 || o.channels > 8)
        bad("start.channels = " + std::to_string(o.channels) + ": must be an integer in [1, 8]");
    if (o.language && !valid_language(*o.language))
        bad("start.language = " + repr(*o.language) + ": must be a 2-3 letter lower-case code or null");
    if (o.stream_id && !valid_stream_id(*o.stream_id))
        bad("start.stream_id = " + repr(*o.stream_id) +
            ": must be 1-64 characters of A-Z a-z 0-9 _ . : @ - (starting with a letter or digit)");
    if (o.token) {
        const std::string& t = *o.token;
        const bool blank_edge = !t.empty() && (std::isspace(static_cast<unsigned char>(t.front())) ||
                                               std::isspace(static_cast<unsigned char>(t.back())));
        if (t.empty() || blank_edge || t.find_first_of("\r\n") != std::string::npos)
            fail("invalid_option", "token must be a non-empty string of one line without surrounding blanks");
    }
    if (!o.ca_file.empty() && !url.tls)
        fail("invalid_option", "a CA file applies only to wss:// URLs, not " + o.url);
    if (!(o.open_timeout_s > 0) || !(o.max_queued_audio_s > 0) || !std::isfinite(o.max_queued_audio_s))
        fail("invalid_option", "open_timeout_s and max_queued_audio_s must be > 0");
#ifndef CRAB_RT_CLIENT_HAVE_TLS
    if (url.tls)
        fail("tls", "wss:// is not supported: this crab_rt_client was built without TLS (OpenSSL); rebuild it "
                    "with libssl-dev installed (-DCRAB_RT_CLIENT_TLS=ON) or use ws://");
#endif
}

std::string start_message(const Options& o) {
    // Version 1.1 only when provisional events are asked for, so that a version-1 server takes other streams.
    json msg = {{"type", "start"},
                {"protocol", o.provisional ? json(1.1) : json(1)},
                {"sample_rate", o.sample_rate},
                {"format", to_string(o.format)},
                {"channels", o.channels},
                {"realtime", o.realtime}};
    if (o.language) msg["language"] = *o.language;
    if (o.stream_id) msg["stream_id"] = *o.stream_id;
    if (o.provisional) msg["provisional"] = true;
    return msg.dump();
}

// ---- PCM -----------------------------------------------------------------------------------------------------

namespace {

void put_le16(std::uint8_t* p, std::int16_t v) {
    const auto u = static_cast<std::uint16_t>(v);
    p[0] = static_cast<std::uint8_t>(u & 0xFF);
    p[1] = static_cast<std::uint8_t>(u >> 8);
}

void put_le32f(std::uint8_t* p, float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    p[0] = static_cast<std::uint8_t>(u & 0xFF);
    p[1] = static_cast<std::uint8_t>((u >> 8) & 0xFF);
    p[2] = static_cast<std::uint8_t>((u >> 16) & 0xFF);
    p[3] = static_cast<std::uint8_t>(u >> 24);
}

}  // namespace

std::vector<std::uint8_t> encode_pcm(const float* samples, std::size_t count, SampleFormat format) {
    for (std::size_t i = 0; i < count; ++i)
        if (!std::isfinite(samples[i])) fail("bad_audio", "audio holds NaN or infinite samples");
    std::vector<std::uint8_t> out(count * (format == SampleFormat::s16le ? 2 : 4));
    if (format == SampleFormat::s16le) {
        for (std::size_t i = 0; i < count; ++i) {
            const double v = std::nearbyint(static_cast<double>(samples[i]) * 32768.0);  // half to even, as np.rint
            put_le16(&out[2 * i], static_cast<std::int16_t>(std::clamp(v, -32768.0, 32767.0)));
        }
    } else {
        for (std::size_t i = 0; i < count; ++i) put_le32f(&out[4 * i], samples[i]);
    }
    return out;
}

std::vector<std::uint8_t> encode_pcm(const std::int16_t* samples, std::size_t count, SampleFormat format) {
    std::vector<std::uint8_t> out(count * (format == SampleFormat::s16le ? 2 : 4));
    if (format == SampleFormat::s16le) {
        for (std::size_t i = 0; i < count; ++i) put_le16(&out[2 * i], samples[i]);
    } else {
        for (std::size_t i = 0; i < count; ++i) put_le32f(&out[4 * i], static_cast<float>(samples[i]) / 32768.0f);
    }
    return out;
}

// ---- server messages ------------------------------------------------------------------------------------------

namespace {

struct Fields {
    const json& msg;
    const std::string& kind;
    std::string_view text;

    const json& need(const char* name) const {
        const auto it = msg.find(name);
        if (it == msg.end())
            fail("bad_message", "the server sent a " + kind + " message without its '" + name +
                                    "' field: " + detail::excerpt(text, 200));
        return *it;
    }
    [[noreturn]] void wrong(const char* name, const json& value, const char* expected) const {
        std::string shown = value.dump(-1, ' ', true);  // the JSON value (ASCII), as Python's !r shows it
        if (shown.size() > 120) shown = shown.substr(0, 120) + "...";
        fail("bad_message", "the server sent a " + kind + " message with " + name + " = " + shown + ": expected " +
                                expected);
    }
    std::string str(const char* name) const {
        const json& v = need(name);
        if (!v.is_string()) wrong(name, v, "a string");
        return v.get<std::string>();
    }
    std::optional<std::string> opt_str(const char* name) const {
        const json& v = need(name);
        if (v.is_null()) return std::nullopt;
        if (!v.is_string()) wrong(name, v, "a string");
        return v.get<std::string>();
    }
    std::int64_t integer(const char* name) const {
        const json& v = need(name);
        if (!v.is_number_integer()) wrong(name, v, "an integer");
        if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
            wrong(name, v, "an integer");
        return v.get<std::int64_t>();
    }
    std::optional<std::int64_t> opt_integer(const char* name) const {
        if (need(name).is_null()) return std::nullopt;
        return integer(name);
    }
    double number(const char* name) const {
        const json& v = need(name);
        if (!v.is_number()) wrong(name, v, "a number");
        return v.get<double>();
    }
    bool boolean(const char* name) const {
        const json& v = need(name);
        if (!v.is_boolean()) wrong(name, v, "true or false");
        return v.get<bool>();
    }
    // A field a server of an earlier protocol version leaves out: `fallback` when absent.
    bool has(const char* name) const { return msg.contains(name); }
    bool opt_boolean(const char* name, bool fallback) const { return has(name) ? boolean(name) : fallback; }
    double version(const char* name) const {
        const json& v = need(name);
        if (!v.is_number() || (v.get<double>() != 1.0 && v.get<double>() != 1.1)) wrong(name, v, "1 or 1.1");
        return v.get<double>();
    }
    std::vector<std::string> strings(const char* name) const {
        const json& v = need(name);
        if (!v.is_array()) wrong(name, v, "a list of strings");
        std::vector<std::string> out;
        for (const auto& item : v) {
            if (!item.is_string()) wrong(name, v, "a list of strings");
            out.push_back(item.get<std::string>());
        }
        return out;
    }
    std::vector<std::pair<std::string, double>> numbers(const char* name) const {
        const json& v = need(name);
        if (!v.is_object()) wrong(name, v, "an object of numbers");
        std::vector<std::pair<std::string, double>> out;
        for (const auto& [key, value] : v.items()) {
            if (!value.is_number()) wrong(name, v, "an object of numbers");
            out.emplace_back(key, value.get<double>());
        }
        return out;
    }
};

}  // namespace

ServerMessage parse_server_message(std::string_view text) {
    json msg;
    try {
        msg = json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
        fail("bad_message", std::string("the server sent a text message that is not JSON (") + e.what() +
                                "): " + detail::excerpt(text, 120));
    }
    if (!msg.is_object() || !msg.contains("type") || !msg["type"].is_string())
        fail("bad_message", "the server sent a message without a type: " + detail::excerpt(text, 120));
    const std::string kind = msg["type"].get<std::string>();
    const Fields f{msg, kind, text};
    if (kind == "ready") {
        Ready r;
        r.stream_id = f.str("stream_id");
        r.server = f.str("server");
        r.labels = f.strings("labels");
        r.sample_rate = f.integer("sample_rate");
        r.format = f.str("format");
        r.channels = f.integer("channels");
        r.language = f.opt_str("language");
        r.realtime = f.boolean("realtime");
        r.max_message_bytes = f.integer("max_message_bytes");
        r.idle_timeout_s = f.number("idle_timeout_s");
        r.protocol = f.version("protocol");
        r.provisional = f.opt_boolean("provisional", false);
        return r;
    }
    if (kind == "speech_start") {
        SpeechStart s;
        s.stream_id = f.str("stream_id");
        s.time_s = f.number("time_s");
        return s;
    }
    if (kind == "speech_end") {
        SpeechEnd s;
        s.stream_id = f.str("stream_id");
        s.time_s = f.number("time_s");
        s.utterance_id = f.opt_integer("utterance_id");
        return s;
    }
    if (kind == "event") {
        Event e;
        e.stream_id = f.str("stream_id");
        e.utterance_id = f.integer("utterance_id");
        e.start_s = f.number("start_s");
        e.end_s = f.number("end_s");
        e.text = f.str("text");
        e.text_flagged = f.boolean("text_flagged");
        e.label = f.str("label");
        e.confidence = f.number("confidence");
        e.probabilities = f.numbers("probabilities");
        e.latency_ms = f.numbers("latency_ms");
        e.forced_split = f.boolean("forced_split");
        if (f.has("stage")) {
            e.stage = f.str("stage");
            if (e.stage != "final" && e.stage != "provisional") f.wrong("stage", f.need("stage"), "final or provisional");
        }
        e.abstained = f.opt_boolean("abstained", false);
        return e;
    }
    if (kind == "error") {
        ServerError s;
        s.code = f.str("code");
        s.message = f.str("message");
        s.fatal = f.boolean("fatal");
        return s;
    }
    if (kind == "done") {
        Done d;
        d.stream_id = f.str("stream_id");
        d.reason = f.str("reason");
        d.audio_s = f.number("audio_s");
        d.utterances = f.integer("utterances");
        d.events = f.integer("events");
        d.dropped_utterances = f.integer("dropped_utterances");
        d.dropped_messages = f.integer("dropped_messages");
        return d;
    }
    return std::monostate{};
}

// ---- the JSON lines -------------------------------------------------------------------------------------------

namespace {

void key(std::string& out, const char* name, bool first = false) {
    if (!first) out += ", ";
    out += '"';
    out += name;
    out += "\": ";
}

void number(std::string& out, double value, int ndigits) {
    out += detail::python_float_repr(ndigits >= 0 ? detail::python_round(value, ndigits) : value);
}

void object(std::string& out, const std::vector<std::pair<std::string, double>>& items, int ndigits) {
    out += '{';
    bool first = true;
    for (const auto& [name, value] : items) {
        if (!first) out += ", ";
        first = false;
        detail::append_json_string(out, name, false);
        out += ": ";
        number(out, value, ndigits);
    }
    out += '}';
}

double lookup(const std::vector<std::pair<std::string, double>>& items, std::string_view name) noexcept {
    for (const auto& [k, v] : items)
        if (k == name) return v;
    return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

double Event::probability(std::string_view name) const noexcept { return lookup(probabilities, name); }
double Event::latency(std::string_view stage) const noexcept { return lookup(latency_ms, stage); }

std::string Event::to_json() const {
    // EmotionEvent.to_dict(): start_s/end_s to 3 decimals, confidence and probabilities to 4, latencies to 2;
    // json.dumps(..., ensure_ascii=False).
    std::string out = "{";
    key(out, "stream_id", true);
    detail::append_json_string(out, stream_id, false);
    key(out, "utterance_id");
    out += std::to_string(utterance_id);
    key(out, "start_s");
    number(out, start_s, 3);
    key(out, "end_s");
    number(out, end_s, 3);
    key(out, "text");
    detail::append_json_string(out, text, false);
    key(out, "text_flagged");
    out += text_flagged ? "true" : "false";
    key(out, "label");
    detail::append_json_string(out, label, false);
    key(out, "confidence");
    number(out, confidence, 4);
    key(out, "probabilities");
    object(out, probabilities, 4);
    key(out, "latency_ms");
    object(out, latency_ms, 2);
    key(out, "forced_split");
    out += forced_split ? "true" : "false";
    key(out, "stage");
    detail::append_json_string(out, stage, false);
    key(out, "abstained");
    out += abstained ? "true" : "false";
    out += '}';
    return out;
}

std::string SpeechStart::to_json() const {
    // json.dumps(SpeechStart.to_dict()): ensure_ascii=True, no rounding.
    std::string out = "{";
    key(out, "type", true);
    out += "\"speech_start\"";
    key(out, "stream_id");
    detail::append_json_string(out, stream_id, true);
    key(out, "time_s");
    number(out, time_s, -1);
    out += '}';
    return out;
}

std::string SpeechEnd::to_json() const {
    std::string out = "{";
    key(out, "type", true);
    out += "\"speech_end\"";
    key(out, "stream_id");
    detail::append_json_string(out, stream_id, true);
    key(out, "time_s");
    number(out, time_s, -1);
    key(out, "utterance_id");
    out += utterance_id ? std::to_string(*utterance_id) : "null";
    out += '}';
    return out;
}

}  // namespace crab_rt
