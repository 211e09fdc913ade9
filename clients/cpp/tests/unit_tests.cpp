// Unit tests of crab_rt_client without a crab-rt server: event parsing (missing and extra fields), the JSON lines
// (Python's formatting), PCM conversion, URL and option checks, and the client's error paths that need no server
// (invalid options, refused connection, handshake timeout, a full send queue, callbacks that throw).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "crab_rt/client.hpp"
#include "internal.hpp"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        ++g_checks;                                                                            \
        if (!(cond)) {                                                                         \
            ++g_failures;                                                                      \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond << std::endl; \
        }                                                                                      \
    } while (0)

#define CHECK_EQ(a, b)                                                                                       \
    do {                                                                                                     \
        ++g_checks;                                                                                          \
        const auto& va_ = (a);                                                                               \
        const auto& vb_ = (b);                                                                               \
        if (!(va_ == vb_)) {                                                                                 \
            ++g_failures;                                                                                    \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK_EQ failed: " #a " == " #b "\n  left:  " << va_ \
                      << "\n  right: " << vb_ << std::endl;                                                  \
        }                                                                                                    \
    } while (0)

// The ClientError `f` throws (its error), or a failed check.
crab_rt::Error thrown(const std::function<void()>& f, int line) {
    try {
        f();
    } catch (const crab_rt::ClientError& e) {
        return e.error();
    } catch (const std::exception& e) {
        ++g_failures;
        std::cerr << __FILE__ << ":" << line << ": unexpected exception " << e.what() << std::endl;
        return {};
    }
    ++g_failures;
    std::cerr << __FILE__ << ":" << line << ": expected a ClientError" << std::endl;
    return {};
}
#define THROWN(expr) thrown([&] { (void)(expr); }, __LINE__)

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

using crab_rt::detail::python_float_repr;
using crab_rt::detail::python_round;

// ---- Python's float formatting and rounding ----------------------------------------------------------------------

void test_python_float_repr() {
    // Expected values: Python 3.11 repr().
    CHECK_EQ(python_float_repr(0.0), "0.0");
    CHECK_EQ(python_float_repr(-0.0), "-0.0");
    CHECK_EQ(python_float_repr(1.0), "1.0");
    CHECK_EQ(python_float_repr(11.0), "11.0");
    CHECK_EQ(python_float_repr(0.3119), "0.3119");
    CHECK_EQ(python_float_repr(2.34), "2.34");
    CHECK_EQ(python_float_repr(0.1), "0.1");
    CHECK_EQ(python_float_repr(0.1 + 0.2), "0.30000000000000004");
    CHECK_EQ(python_float_repr(212.4), "212.4");
    CHECK_EQ(python_float_repr(0.0001), "0.0001");
    CHECK_EQ(python_float_repr(0.000123), "0.000123");
    CHECK_EQ(python_float_repr(1e-05), "1e-05");
    CHECK_EQ(python_float_repr(1.23e-05), "1.23e-05");
    CHECK_EQ(python_float_repr(1e15), "1000000000000000.0");
    CHECK_EQ(python_float_repr(1e16), "1e+16");
    CHECK_EQ(python_float_repr(12345678901234567.0), "1.2345678901234568e+16");
    CHECK_EQ(python_float_repr(123456789.125), "123456789.125");
    CHECK_EQ(python_float_repr(1.5e300), "1.5e+300");
    CHECK_EQ(python_float_repr(5e-324), "5e-324");
    CHECK_EQ(python_float_repr(1.7976931348623157e308), "1.7976931348623157e+308");
    CHECK_EQ(python_float_repr(-2.5), "-2.5");
    CHECK_EQ(python_float_repr(std::numeric_limits<double>::infinity()), "Infinity");
    CHECK_EQ(python_float_repr(std::nan("")), "NaN");
}

void test_python_round() {
    // round(x, n): correctly rounded, half to even on the exact binary value (Python 3.11).
    CHECK_EQ(python_float_repr(python_round(2.675, 2)), "2.67");  // 2.67499999...
    CHECK_EQ(python_float_repr(python_round(0.125, 2)), "0.12");  // an exact tie: to even
    CHECK_EQ(python_float_repr(python_round(0.375, 2)), "0.38");
    CHECK_EQ(python_float_repr(python_round(1.0005, 3)), "1.0");
    CHECK_EQ(python_float_repr(python_round(0.31194999, 4)), "0.3119");
    CHECK_EQ(python_float_repr(python_round(0.31195001, 4)), "0.312");
    CHECK_EQ(python_float_repr(python_round(212.405, 2)), "212.41");  // 212.40500000000000113...
    CHECK_EQ(python_float_repr(python_round(2.5, 0)), "2.0");
    CHECK_EQ(python_float_repr(python_round(-0.00001, 3)), "-0.0");
    CHECK_EQ(python_float_repr(python_round(11.0, 3)), "11.0");
    CHECK_EQ(python_float_repr(python_round(1e300, 3)), "1e+300");
    CHECK_EQ(python_float_repr(python_round(0.00004, 4)), "0.0");
    CHECK_EQ(python_float_repr(python_round(0.00005, 4)), "0.0001");  // 5.0000000000000002e-05
}

void test_json_strings() {
    std::string out;
    crab_rt::detail::append_json_string(out, "a\"b\\c\nd\te\x01\x7f é ☃ 😀", false);
    CHECK_EQ(out, "\"a\\\"b\\\\c\\nd\\te\\u0001\x7f é ☃ 😀\"");
    out.clear();
    crab_rt::detail::append_json_string(out, "a\x7f é ☃ 😀", true);
    CHECK_EQ(out, "\"a\\u007f \\u00e9 \\u2603 \\ud83d\\ude00\"");
    out.clear();
    crab_rt::detail::append_json_string(out, std::string("bad \xff utf8"), false);
    CHECK_EQ(out, "\"bad \xef\xbf\xbd utf8\"");
}

// ---- events -------------------------------------------------------------------------------------------------

const char* kEvent =
    R"({"type": "event", "stream_id": "robot-7:mic-0", "utterance_id": 3, "start_s": 0.5, "end_s": 2.3125,)"
    R"( "text": "and so \"my\" fellow\namericans \u00e9 \u2603", "text_flagged": false, "label": "neutral",)"
    R"( "confidence": 0.41234, "probabilities": {"sad": 0.2, "angry": 0.12, "happy": 0.26766, "neutral": 0.41234},)"
    R"( "latency_ms": {"end_to_event": 212.4049, "asr": 150, "speech_encoder": 60.1, "text_encoder": 8.2,)"
    R"( "head": 1.1, "queue_wait": 0.004}, "forced_split": true, "extra": {"nested": [1, 2]}, "more": null})";

void test_parse_event_with_extra_fields() {
    const auto msg = crab_rt::parse_server_message(kEvent);
    const auto* e = std::get_if<crab_rt::Event>(&msg);
    CHECK(e != nullptr);
    if (e == nullptr) return;
    CHECK_EQ(e->stream_id, "robot-7:mic-0");
    CHECK_EQ(e->utterance_id, 3);
    CHECK_EQ(e->start_s, 0.5);
    CHECK_EQ(e->end_s, 2.3125);
    CHECK_EQ(e->text, "and so \"my\" fellow\namericans é ☃");
    CHECK(!e->text_flagged);
    CHECK_EQ(e->label, "neutral");
    CHECK_EQ(e->confidence, 0.41234);
    CHECK_EQ(e->probabilities.size(), 4u);
    CHECK_EQ(e->probabilities[0].first, "sad");  // the server's order, not sorted
    CHECK_EQ(e->probability("happy"), 0.26766);
    CHECK(std::isnan(e->probability("bored")));
    CHECK_EQ(e->latency("asr"), 150.0);
    CHECK(e->forced_split);
    // EmotionEvent(**fields).to_json() in Python 3.11, byte for byte:
    CHECK_EQ(e->to_json(),
             std::string(R"({"stream_id": "robot-7:mic-0", "utterance_id": 3, "start_s": 0.5, "end_s": 2.312,)"
                         R"( "text": "and so \"my\" fellow\namericans é ☃", "text_flagged": false, "label": "neutral",)"
                         R"( "confidence": 0.4123, "probabilities": {"sad": 0.2, "angry": 0.12, "happy": 0.2677,)"
                         R"( "neutral": 0.4123}, "latency_ms": {"end_to_event": 212.4, "asr": 150.0,)"
                         R"( "speech_encoder": 60.1, "text_encoder": 8.2, "head": 1.1, "queue_wait": 0.0},)"
                         R"( "forced_split": true, "stage": "final", "abstained": false})"));
    // A version-1 server's event has no stage: it is a final one.
    CHECK_EQ(e->stage, "final");
    CHECK(!e->abstained);
}

void test_parse_provisional_event() {
    std::string text = kEvent;
    text.replace(text.find(", \"extra\""), 0, R"(, "stage": "provisional", "abstained": true)");
    const auto msg = crab_rt::parse_server_message(text);
    const auto* e = std::get_if<crab_rt::Event>(&msg);
    CHECK(e != nullptr);
    if (e == nullptr) return;
    CHECK_EQ(e->stage, "provisional");
    CHECK(e->abstained);
    CHECK(contains(e->to_json(), R"("forced_split": true, "stage": "provisional", "abstained": true})"));
    std::string wrong = kEvent;
    wrong.replace(wrong.find(", \"extra\""), 0, R"(, "stage": "early")");
    auto error = THROWN(crab_rt::parse_server_message(wrong));
    CHECK(contains(error.message, "expected final or provisional"));
    wrong = kEvent;
    wrong.replace(wrong.find(", \"extra\""), 0, R"(, "abstained": "no")");
    error = THROWN(crab_rt::parse_server_message(wrong));
    CHECK(contains(error.message, "with abstained = ") && contains(error.message, "expected true or false"));
}

void test_parse_refuses_missing_or_wrong_fields() {
    const std::string base = kEvent;
    auto without = [&](const std::string& field_and_value) {
        std::string s = base;
        const auto at = s.find(field_and_value);
        s.erase(at, field_and_value.size());
        return s;
    };
    auto e = THROWN(crab_rt::parse_server_message(without(R"( "label": "neutral",)")));
    CHECK_EQ(e.code, "bad_message");
    CHECK(contains(e.message, "the server sent a event message without its 'label' field: "));
    e = THROWN(crab_rt::parse_server_message(without(R"(, "forced_split": true)")));
    CHECK(contains(e.message, "without its 'forced_split' field"));
    std::string wrong = base;
    wrong.replace(wrong.find("\"utterance_id\": 3"), 17, "\"utterance_id\": 3.0");
    e = THROWN(crab_rt::parse_server_message(wrong));
    CHECK(contains(e.message, "event message with utterance_id = 3.0: expected an integer"));
    wrong = base;
    wrong.replace(wrong.find("\"text_flagged\": false"), 21, "\"text_flagged\": 0");
    e = THROWN(crab_rt::parse_server_message(wrong));
    CHECK(contains(e.message, "with text_flagged = 0: expected true or false"));
    wrong = base;
    wrong.replace(wrong.find("\"start_s\": 0.5"), 14, "\"start_s\": true");
    e = THROWN(crab_rt::parse_server_message(wrong));
    CHECK(contains(e.message, "with start_s = true: expected a number"));
    e = THROWN(crab_rt::parse_server_message(R"({"type": "speech_start", "stream_id": "s"})"));
    CHECK(contains(e.message, "speech_start message without its 'time_s' field"));
    e = THROWN(crab_rt::parse_server_message("not json"));
    CHECK(contains(e.message, "the server sent a text message that is not JSON"));
    e = THROWN(crab_rt::parse_server_message(R"({"no": "type"})"));
    CHECK(contains(e.message, "the server sent a message without a type"));
    e = THROWN(crab_rt::parse_server_message(R"([1, 2])"));
    CHECK(contains(e.message, "without a type"));
}

void test_parse_other_messages() {
    CHECK(std::holds_alternative<std::monostate>(crab_rt::parse_server_message(R"({"type": "future_thing", "x": 1})")));
    auto msg = crab_rt::parse_server_message(
        R"({"type": "ready", "protocol": 1, "stream_id": "s", "server": "crab-rt 0.1.0", "labels": ["a", "b"],)"
        R"( "sample_rate": 44100, "format": "s16le", "channels": 2, "language": null, "realtime": true,)"
        R"( "max_message_bytes": 1048576, "idle_timeout_s": 30.0, "new_field": 1})");
    const crab_rt::Ready* r = std::get_if<crab_rt::Ready>(&msg);
    CHECK(r != nullptr && !r->language && r->labels.size() == 2 && r->max_message_bytes == 1048576 &&
          r->channels == 2 && r->sample_rate == 44100 && r->protocol == 1.0 && !r->provisional);
    msg = crab_rt::parse_server_message(
        R"({"type": "ready", "protocol": 1.1, "provisional": true, "stream_id": "s", "server": "crab-rt 0.1.0",)"
        R"( "labels": ["a", "b"], "sample_rate": 16000, "format": "f32le", "channels": 1, "language": null,)"
        R"( "realtime": false, "max_message_bytes": 1048576, "idle_timeout_s": 30.0})");
    r = std::get_if<crab_rt::Ready>(&msg);
    CHECK(r != nullptr && r->protocol == 1.1 && r->provisional);
    auto bad = THROWN(crab_rt::parse_server_message(
        R"({"type": "ready", "protocol": 2, "stream_id": "s", "server": "x", "labels": ["a", "b"],)"
        R"( "sample_rate": 16000, "format": "f32le", "channels": 1, "language": null, "realtime": false,)"
        R"( "max_message_bytes": 1, "idle_timeout_s": 30.0})"));
    CHECK(contains(bad.message, "with protocol = 2: expected 1 or 1.1"));
    msg = crab_rt::parse_server_message(R"({"type": "speech_end", "stream_id": "s", "time_s": 2.21, "utterance_id": null})");
    const auto* se = std::get_if<crab_rt::SpeechEnd>(&msg);
    CHECK(se != nullptr && !se->utterance_id);
    if (se != nullptr) CHECK_EQ(se->to_json(), R"({"type": "speech_end", "stream_id": "s", "time_s": 2.21, "utterance_id": null})");
    msg = crab_rt::parse_server_message(R"({"type": "speech_start", "stream_id": "s", "time_s": 11})");
    const auto* ss = std::get_if<crab_rt::SpeechStart>(&msg);
    CHECK(ss != nullptr);
    if (ss != nullptr) CHECK_EQ(ss->to_json(), R"({"type": "speech_start", "stream_id": "s", "time_s": 11.0})");
    msg = crab_rt::parse_server_message(
        R"({"type": "done", "stream_id": "s", "reason": "stop", "audio_s": 11.0, "utterances": 4, "events": 4,)"
        R"( "dropped_utterances": 0, "dropped_messages": 0})");
    const auto* d = std::get_if<crab_rt::Done>(&msg);
    CHECK(d != nullptr && d->reason == "stop" && d->events == 4);
    msg = crab_rt::parse_server_message(R"({"type": "error", "code": "bad_audio", "message": "m", "fatal": true})");
    const auto* er = std::get_if<crab_rt::ServerError>(&msg);
    CHECK(er != nullptr && er->code == "bad_audio" && er->fatal);
}

// ---- PCM -----------------------------------------------------------------------------------------------------

std::vector<int> s16(const std::vector<std::uint8_t>& bytes) {
    std::vector<int> out;
    for (std::size_t i = 0; i + 1 < bytes.size(); i += 2)
        out.push_back(static_cast<std::int16_t>(static_cast<std::uint16_t>(bytes[i] | (bytes[i + 1] << 8))));
    return out;
}

void test_pcm() {
    using crab_rt::SampleFormat;
    // crab_rt.client.encode_pcm: clip(rint(x * 32768), -32768, 32767), half to even
    const std::vector<float> x = {0.0f, 0.5f, -0.5f, 1.0f, -1.0f, 1.5f / 32768, 0.5f / 32768, -1.5f / 32768, 2.0f};
    CHECK(s16(crab_rt::encode_pcm(x.data(), x.size(), SampleFormat::s16le)) ==
          (std::vector<int>{0, 16384, -16384, 32767, -32768, 2, 0, -2, 32767}));
    const float half = 0.5f;
    CHECK(crab_rt::encode_pcm(&half, 1, SampleFormat::f32le) == (std::vector<std::uint8_t>{0x00, 0x00, 0x00, 0x3f}));
    const std::int16_t ints[] = {-32768, 1, 32767};
    CHECK(crab_rt::encode_pcm(ints, 3, SampleFormat::s16le) ==
          (std::vector<std::uint8_t>{0x00, 0x80, 0x01, 0x00, 0xff, 0x7f}));
    CHECK(crab_rt::encode_pcm(ints, 1, SampleFormat::f32le) == (std::vector<std::uint8_t>{0x00, 0x00, 0x80, 0xbf}));
    const float nan[] = {0.0f, std::nanf("")};
    CHECK_EQ(THROWN(crab_rt::encode_pcm(nan, 2, SampleFormat::f32le)).code, "bad_audio");
    const float inf[] = {std::numeric_limits<float>::infinity()};
    CHECK_EQ(THROWN(crab_rt::encode_pcm(inf, 1, SampleFormat::s16le)).message, "audio holds NaN or infinite samples");
    CHECK_EQ(crab_rt::detail::frame_bytes(SampleFormat::s16le, 2), 4u);
    CHECK_EQ(crab_rt::detail::frame_bytes(SampleFormat::f32le, 3), 12u);
}

// ---- URL and options ------------------------------------------------------------------------------------------

void test_urls() {
    auto u = crab_rt::parse_url("ws://127.0.0.1:8765/");
    CHECK(!u.tls && u.host == "127.0.0.1" && u.port == 8765 && u.target == "/");
    CHECK_EQ(u.address(), "127.0.0.1:8765");
    u = crab_rt::parse_url("WSS://Robot.Local/streams/a?x=1#frag");
    CHECK(u.tls && u.host == "robot.local" && u.port == 443 && u.target == "/streams/a?x=1");
    u = crab_rt::parse_url("ws://host");
    CHECK(u.port == 80 && u.target == "/");
    u = crab_rt::parse_url("ws://[::1]:9000");
    CHECK_EQ(u.host, "::1");
    CHECK_EQ(u.address(), "[::1]:9000");
    for (const char* bad : {"http://127.0.0.1:8765/", "127.0.0.1:8765", "ws://", "ws://host:port/", "", "ws://h:70000/",
                            "ws://h:0/", "ws://:80/", "ws://h:-1/", "ws://a b/", "ws://[::1/", "wss//h"}) {
        const auto e = THROWN(crab_rt::parse_url(bad));
        CHECK_EQ(e.code, "invalid_url");
        CHECK_EQ(e.message, std::string("invalid server URL '") + bad + "': expected ws://HOST:PORT/ or wss://HOST:PORT/");
    }
}

void test_options() {
    crab_rt::Options o;
    crab_rt::validate_options(o);  // the defaults are valid
    auto check = [&](const std::function<void(crab_rt::Options&)>& change, const char* code, const char* part) {
        crab_rt::Options bad;
        change(bad);
        const auto e = THROWN(crab_rt::validate_options(bad));
        CHECK_EQ(e.code, code);
        if (!contains(e.message, part)) {
            ++g_failures;
            std::cerr << "expected '" << part << "' in: " << e.message << std::endl;
        }
    };
    check([](auto& b) { b.url = "http://x/"; }, "invalid_url", "invalid server URL 'http://x/'");
    check([](auto& b) { b.sample_rate = 7999; }, "invalid_option",
          "invalid stream option: start.sample_rate = 7999: must be an integer in [8000, 192000]");
    check([](auto& b) { b.sample_rate = 192001; }, "invalid_option", "start.sample_rate = 192001");
    check([](auto& b) { b.channels = 0; }, "invalid_option", "start.channels = 0: must be an integer in [1, 8]");
    check([](auto& b) { b.channels = 9; }, "invalid_option", "start.channels = 9");
    check([](auto& b) { b.format = static_cast<crab_rt::SampleFormat>(7); }, "invalid_option", "start.format = 7");
    check([](auto& b) { b.language = "EN"; }, "invalid_option",
          "start.language = 'EN': must be a 2-3 letter lower-case code or null");
    check([](auto& b) { b.language = "engl"; }, "invalid_option", "start.language = 'engl'");
    check([](auto& b) { b.stream_id = "bad id"; }, "invalid_option",
          "start.stream_id = 'bad id': must be 1-64 characters of A-Z a-z 0-9 _ . : @ - (starting with a letter or digit)");
    check([](auto& b) { b.stream_id = std::string(65, 'a'); }, "invalid_option", "start.stream_id = 'aaaa");
    check([](auto& b) { b.stream_id = "-x"; }, "invalid_option", "start.stream_id = '-x'");
    check([](auto& b) { b.stream_id = ""; }, "invalid_option", "start.stream_id = ''");
    check([](auto& b) { b.token = ""; }, "invalid_option", "token must be a non-empty string of one line");
    check([](auto& b) { b.token = " s3cret"; }, "invalid_option", "without surrounding blanks");
    check([](auto& b) { b.token = "a\nb"; }, "invalid_option", "token must be");
    check([](auto& b) { b.ca_file = "/etc/ssl/ca.pem"; }, "invalid_option",
          "a CA file applies only to wss:// URLs, not ws://127.0.0.1:8765/");
    check([](auto& b) { b.open_timeout_s = 0; }, "invalid_option", "open_timeout_s and max_queued_audio_s must be > 0");
    check([](auto& b) { b.max_queued_audio_s = -1; }, "invalid_option", "must be > 0");
#ifndef CRAB_RT_CLIENT_HAVE_TLS
    check([](auto& b) { b.url = "wss://h/"; }, "tls", "wss:// is not supported");
#endif
    crab_rt::Options good;
    good.stream_id = std::string("robot-7:mic-0");
    good.language = std::string("en");
    good.channels = 2;
    good.sample_rate = 44100;
    good.format = crab_rt::SampleFormat::s16le;
    good.token = std::string("s3cret");
    crab_rt::validate_options(good);
    CHECK_EQ(crab_rt::start_message(good),
             R"({"type":"start","protocol":1,"sample_rate":44100,"format":"s16le","channels":2,"realtime":true,)"
             R"("language":"en","stream_id":"robot-7:mic-0"})");
    good.provisional = true;  // protocol 1.1, only then
    CHECK_EQ(crab_rt::start_message(good),
             R"({"type":"start","protocol":1.1,"sample_rate":44100,"format":"s16le","channels":2,"realtime":true,)"
             R"("language":"en","stream_id":"robot-7:mic-0","provisional":true})");
}

// ---- the client without a server --------------------------------------------------------------------------------

// Records the fatal errors (`errors`) and the non-fatal ones (`warnings`: a throwing on_closed is reported).
struct Recorder {
    std::mutex mutex;
    std::vector<crab_rt::Error> errors;
    std::vector<crab_rt::Error> warnings;
    int closed = 0;
    crab_rt::Callbacks callbacks(bool throwing = false) {
        crab_rt::Callbacks cb;
        cb.on_error = [this, throwing](const crab_rt::Error& e) {
            {
                std::lock_guard<std::mutex> lock(mutex);
                (e.fatal ? errors : warnings).push_back(e);
            }
            if (throwing) throw std::runtime_error("a callback that throws");
        };
        cb.on_closed = [this, throwing] {
            {
                std::lock_guard<std::mutex> lock(mutex);
                ++closed;
            }
            if (throwing) throw 42;
        };
        return cb;
    }
};

int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

// A TCP listener that never accepts: connections complete (the backlog) and no handshake answer ever comes.
struct SilentListener {
    int fd = -1;
    int port = 0;
    SilentListener() {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        ::listen(fd, 8);
        socklen_t len = sizeof addr;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
    }
    ~SilentListener() { ::close(fd); }
};

void test_client_invalid_options_reach_the_error_callback() {
    for (bool throwing : {false, true}) {
        Recorder rec;
        crab_rt::Options o;
        o.url = "ws://host:port/";
        crab_rt::Client client(o, rec.callbacks(throwing));
        const std::int16_t pcm[2] = {0, 0};
        CHECK(client.send_audio(pcm, 2) == crab_rt::SendStatus::not_accepting);
        CHECK(!client.start());
        CHECK(!client.start());
        CHECK(client.wait(1.0));
        CHECK(client.state() == crab_rt::State::closed);
        CHECK_EQ(rec.errors.size(), 1u);
        CHECK_EQ(rec.closed, 1);
        if (!rec.errors.empty()) {
            CHECK_EQ(rec.errors[0].code, "invalid_url");
            CHECK(rec.errors[0].fatal);
        }
        CHECK_EQ(rec.warnings.size(), throwing ? 1u : 0u);  // the throwing on_closed, reported, not fatal
        if (throwing && !rec.warnings.empty()) {
            CHECK_EQ(rec.warnings[0].code, "callback");
            CHECK_EQ(rec.warnings[0].message,
                     "ws://host:port/: the on_closed callback threw: an exception that is not a std::exception");
        }
        const auto result = client.result();
        CHECK(!result.ok && result.error && result.error->code == "invalid_url" && !result.done);
        CHECK(client.send_audio(pcm, 2) == crab_rt::SendStatus::not_accepting);
        CHECK(!client.finish());
        client.close();
    }
    Recorder rec;
    crab_rt::Options o;
    o.stream_id = "bad id";
    crab_rt::Client client(o, rec.callbacks());
    CHECK(!client.start());
    CHECK(rec.errors.size() == 1 && rec.errors[0].code == "invalid_option");
}

void test_client_refused_connection() {
    for (bool throwing : {false, true}) {
        Recorder rec;
        crab_rt::Options o;
        const int port = free_port();
        o.url = "ws://127.0.0.1:" + std::to_string(port) + "/";
        crab_rt::Client client(o, rec.callbacks(throwing));
        CHECK(client.start());
        CHECK(client.wait(10.0));
        std::lock_guard<std::mutex> lock(rec.mutex);
        CHECK_EQ(rec.errors.size(), 1u);
        CHECK_EQ(rec.closed, 1);
        CHECK_EQ(rec.warnings.size(), throwing ? 1u : 0u);
        if (!rec.errors.empty()) {
            CHECK_EQ(rec.errors[0].code, "connect");
            CHECK_EQ(rec.errors[0].message, "cannot connect to 127.0.0.1:" + std::to_string(port) +
                                                ": connection refused (is `crab-rt serve` running there?)");
        }
        CHECK(!client.result().ok);
    }
}

void test_client_handshake_timeout_and_full_queue() {
    SilentListener listener;
    Recorder rec;
    crab_rt::Options o;
    o.url = "ws://127.0.0.1:" + std::to_string(listener.port) + "/";
    o.open_timeout_s = 0.3;
    o.max_queued_audio_s = 0.1;  // 1600 samples of f32le at 16 kHz: 6400 bytes
    crab_rt::Client client(o, rec.callbacks());
    CHECK(client.start());
    std::vector<float> chunk(1600, 0.1f);
    CHECK(client.send_audio(chunk.data(), chunk.size()) == crab_rt::SendStatus::queued);  // waits for ready
    CHECK(client.send_audio(chunk.data(), chunk.size()) == crab_rt::SendStatus::dropped);
    CHECK(client.send_audio(chunk.data(), 1) == crab_rt::SendStatus::dropped);
    const auto stats = client.stats();
    CHECK_EQ(stats.dropped_calls, 2u);
    CHECK_EQ(stats.dropped_bytes, 6404u);
    CHECK_EQ(stats.queued_bytes, 6400u);
    CHECK(client.wait(10.0));
    CHECK_EQ(rec.errors.size(), 1u);
    if (!rec.errors.empty()) {
        CHECK_EQ(rec.errors[0].code, "timeout");
        CHECK_EQ(rec.errors[0].message, "127.0.0.1:" + std::to_string(listener.port) +
                                            ": no WebSocket handshake within 0.3 s");
    }
    CHECK(client.send_audio(chunk.data(), chunk.size()) == crab_rt::SendStatus::not_accepting);
}

void test_client_close_wakes_a_blocked_sender_and_bad_audio() {
    SilentListener listener;
    Recorder rec;
    crab_rt::Options o;
    o.url = "ws://127.0.0.1:" + std::to_string(listener.port) + "/";
    o.channels = 2;
    o.max_queued_audio_s = 0.1;
    o.block_when_full = true;
    crab_rt::Client client(o, rec.callbacks());
    CHECK(client.start());
    std::vector<float> chunk(3200, 0.0f);
    CHECK(client.send_audio(chunk.data(), 3) == crab_rt::SendStatus::bad_audio);  // not whole frames
    chunk[1] = std::nanf("");
    CHECK(client.send_audio(chunk.data(), 2) == crab_rt::SendStatus::bad_audio);
    chunk[1] = 0.0f;
    CHECK(client.send_pcm(chunk.data(), 6) == crab_rt::SendStatus::bad_audio);
    CHECK(client.send_audio(chunk.data(), chunk.size()) == crab_rt::SendStatus::queued);
    std::atomic<int> blocked_status{-1};
    std::thread sender([&] { blocked_status = static_cast<int>(client.send_audio(chunk.data(), chunk.size())); });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK_EQ(blocked_status.load(), -1);  // waiting for room
    const auto t0 = std::chrono::steady_clock::now();
    client.close();
    sender.join();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    CHECK_EQ(blocked_status.load(), static_cast<int>(crab_rt::SendStatus::not_accepting));
    CHECK(client.state() == crab_rt::State::closed);
    CHECK_EQ(rec.errors.size(), 1u);
    if (!rec.errors.empty()) {
        CHECK_EQ(rec.errors[0].code, "closed");
        CHECK(contains(rec.errors[0].message, "the client was closed before the connection opened"));
    }
}

void test_client_destroyed_while_connecting_and_never_started() {
    { crab_rt::Client idle(crab_rt::Options{}, crab_rt::Callbacks{}); }
    SilentListener listener;
    crab_rt::Options o;
    o.url = "ws://127.0.0.1:" + std::to_string(listener.port) + "/";
    const auto t0 = std::chrono::steady_clock::now();
    {
        crab_rt::Client client(o, crab_rt::Callbacks{});
        CHECK(client.start());
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
}

}  // namespace

int main() {
    test_python_float_repr();
    test_python_round();
    test_json_strings();
    test_parse_event_with_extra_fields();
    test_parse_provisional_event();
    test_parse_refuses_missing_or_wrong_fields();
    test_parse_other_messages();
    test_pcm();
    test_urls();
    test_options();
    test_client_invalid_options_reach_the_error_callback();
    test_client_refused_connection();
    test_client_handshake_timeout_and_full_queue();
    test_client_close_wakes_a_blocked_sender_and_bad_audio();
    test_client_destroyed_while_connecting_and_never_started();
    std::printf("crab_rt_client unit tests: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
