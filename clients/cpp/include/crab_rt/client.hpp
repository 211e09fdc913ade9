// crab_rt/client.hpp: the C++ client of the `crab-rt serve` WebSocket protocol, versions 1 and 1.1
// (docs/protocol.md).
//
// One `crab_rt::Client` is one audio stream. It connects on its own I/O thread, sends `start`, waits for
// `ready`, then sends the audio you give it (int16 or float samples, or raw PCM bytes) and delivers what the
// server sends (parsed `Event`s, VAD notices, errors, `done`) to your callbacks, on that I/O thread.
//
//     crab_rt::Options options;
//     options.url = "ws://127.0.0.1:8765/";
//     options.sample_rate = 16000;
//     options.format = crab_rt::SampleFormat::s16le;
//     crab_rt::Callbacks callbacks;
//     callbacks.on_event = [](const crab_rt::Event& e) { std::cout << e.to_json() << "\n"; };
//     callbacks.on_error = [](const crab_rt::Error& e) { std::cerr << e.message << "\n"; };
//     crab_rt::Client client(options, callbacks);
//     client.start();
//     client.send_audio(samples, count);   // from any thread, e.g. a capture callback: never blocks long
//     client.finish();                     // end of audio: the server sends the last events, then done
//     client.wait();                       // until the connection is closed
//
// Errors never throw out of the client's methods (except `std::bad_alloc`): an invalid URL or option, a
// refused connection, a refused handshake (HTTP 401 bad token, 503 server full), a lost connection and the
// server's `error` messages all reach `on_error`, with a one-line message naming the server and the cause.
// The free functions below (parse_url, validate_options, encode_pcm, parse_server_message) throw
// `crab_rt::ClientError` instead: they are the building blocks, usable without a connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "crab_rt/client_export.h"

namespace crab_rt {

// The library's version (the crab-rt release it ships with) and the newest protocol version it speaks: it
// sends 1.1 only for a stream that asks for provisional events, else 1.
CRAB_RT_CLIENT_API const char* version() noexcept;
constexpr double kProtocolVersion = 1.1;

// ---- options ------------------------------------------------------------------------------------------------

// The PCM format declared in `start`: signed 16-bit little-endian, or 32-bit float little-endian in [-1, 1].
enum class SampleFormat { s16le, f32le };
CRAB_RT_CLIENT_API const char* to_string(SampleFormat format) noexcept;

struct Options {
    std::string url = "ws://127.0.0.1:8765/";  // ws://HOST:PORT/ or wss://HOST:PORT/
    int sample_rate = 16000;                   // Hz of the PCM you send, 8000-192000 (the server resamples)
    SampleFormat format = SampleFormat::f32le;
    int channels = 1;                          // interleaved channels, 1-8 (the server averages them)
    std::optional<std::string> language;       // ASR language code (2-3 lower-case letters); none: the server's
    std::optional<std::string> stream_id;      // 1-64 of A-Za-z0-9_.:@- (starting with a letter or digit)
    bool realtime = true;                      // live audio (the server paces it); false for files
    std::optional<std::string> token;          // sent as `Authorization: Bearer <token>`
    std::string ca_file;                       // wss://: PEM file of the CA(s) to trust (default: the system's)
    double open_timeout_s = 10.0;              // for the handshake, and again for `ready`
    // The send queue between the callers of send_audio and the I/O thread, in seconds of audio. When it is
    // full, send_audio drops the call (SendStatus::dropped, counted in Stats) or, with block_when_full,
    // waits for room (files: the server's back-pressure then paces the sender; never from a callback).
    double max_queued_audio_s = 5.0;
    bool block_when_full = false;
    // Protocol 1.1: also receive a provisional event per utterance (Event::stage == "provisional", the voice
    // alone, before ASR; no text), then the final one. A server without the voice-only classifier refuses it.
    bool provisional = false;
};

// ---- messages from the server --------------------------------------------------------------------------------

struct Ready {
    std::string stream_id;
    std::string server;
    std::vector<std::string> labels;
    std::int64_t sample_rate = 0;
    std::string format;
    std::int64_t channels = 0;
    std::optional<std::string> language;
    bool realtime = true;
    std::int64_t max_message_bytes = 0;
    double idle_timeout_s = 0.0;
    double protocol = 1;       // the version the stream speaks: 1 or 1.1
    bool provisional = false;  // (1.1) the stream gets provisional events
};

struct SpeechStart {
    std::string stream_id;
    double time_s = 0.0;  // stream seconds (audio received so far, at 16 kHz)
    // `crab-rt client --show-speech`'s line: {"type": "speech_start", "stream_id": ..., "time_s": ...}
    CRAB_RT_CLIENT_API std::string to_json() const;
};

struct SpeechEnd {
    std::string stream_id;
    double time_s = 0.0;                      // where the silence began
    std::optional<std::int64_t> utterance_id;  // the utterance this region produced, or none
    CRAB_RT_CLIENT_API std::string to_json() const;
};

// One utterance's emotion (an `event` message). Labels and latency stages keep the server's order.
struct Event {
    std::string stream_id;
    std::int64_t utterance_id = 0;
    double start_s = 0.0;
    double end_s = 0.0;
    std::string text;
    bool text_flagged = false;
    std::string label;
    double confidence = 0.0;
    std::vector<std::pair<std::string, double>> probabilities;
    std::vector<std::pair<std::string, double>> latency_ms;  // end_to_event, asr, speech_encoder, ...
    bool forced_split = false;
    std::string stage = "final";  // "final", or "provisional" (the voice alone, before ASR; no text)
    bool abstained = false;       // confidence below the server's --min-confidence (the label stays)

    // probability(label) / latency(stage): the value, or NaN when absent.
    CRAB_RT_CLIENT_API double probability(std::string_view label) const noexcept;
    CRAB_RT_CLIENT_API double latency(std::string_view stage) const noexcept;
    // The JSON line `crab-rt listen` and `crab-rt client` print for this event, byte for byte (Python's
    // json.dumps of EmotionEvent.to_dict(): same keys and order, same rounding, same float formatting).
    CRAB_RT_CLIENT_API std::string to_json() const;
};

struct ServerError {
    std::string code;  // bad_start, protocol, unsupported_language, bad_audio, idle_timeout, server_full, internal, ...
    std::string message;
    bool fatal = true;
};

struct Done {
    std::string stream_id;
    std::string reason;  // stop, drain, idle_timeout, error
    double audio_s = 0.0;
    std::int64_t utterances = 0;
    std::int64_t events = 0;
    std::int64_t dropped_utterances = 0;
    std::int64_t dropped_messages = 0;
};

// A parsed server message; std::monostate for a message of a type this client does not know (ignored).
using ServerMessage = std::variant<std::monostate, Ready, SpeechStart, SpeechEnd, Event, ServerError, Done>;

// ---- errors --------------------------------------------------------------------------------------------------

// What on_error receives. `code` is the server's error code for its `error` messages, or one of the client's:
//   invalid_url, invalid_option  the options were refused before connecting
//   connect                      the server cannot be reached (connection refused, host not found, ...)
//   unauthorized                 HTTP 401: a missing or wrong token
//   unavailable                  HTTP 503: the server is full, loading or draining (retry later)
//   refused                      another HTTP status, or another handshake failure
//   tls                          the TLS handshake failed (or wss:// without TLS support built in)
//   timeout                      no handshake, or no `ready`, within open_timeout_s
//   closed                       the connection ended before `done` (close code in close_code; 1006: lost)
//   bad_message                  the server sent a message this client cannot read
//   callback                     one of your callbacks threw (not fatal: the stream goes on)
struct Error {
    std::string code;
    std::string message;  // one line, naming the server (HOST:PORT) and the cause
    bool fatal = true;    // the stream has ended (or will end after the events already submitted and `done`)
    int http_status = 0;  // the status of a refused handshake, else 0
    int close_code = 0;   // the WebSocket close code when the connection ended early, else 0
};

class CRAB_RT_CLIENT_API ClientError : public std::runtime_error {
public:
    explicit ClientError(Error error);
    const Error& error() const noexcept { return error_; }

private:
    Error error_;
};

// ---- the building blocks (throw ClientError) -------------------------------------------------------------------

struct Url {
    bool tls = false;         // wss://
    std::string host;         // lower case; an IPv6 address without brackets
    std::uint16_t port = 0;   // 80 / 443 when the URL has none
    std::string target = "/"; // path and query
    CRAB_RT_CLIENT_API std::string address() const;  // HOST:PORT or [HOST]:PORT, as error messages name the server
};

// ws://HOST[:PORT][/PATH] or wss://...; throws ClientError (invalid_url).
CRAB_RT_CLIENT_API Url parse_url(const std::string& url);
// Every option checked as the server checks `start` (and the URL); throws ClientError (invalid_url,
// invalid_option, tls for wss:// in a build without TLS).
CRAB_RT_CLIENT_API void validate_options(const Options& options);
// The `start` message for these options (JSON text).
CRAB_RT_CLIENT_API std::string start_message(const Options& options);
// Samples as the PCM bytes of `format`: floats are clipped and scaled by 32768 and rounded to nearest (even)
// for s16le, as crab_rt.client does; int16 samples are sent as they are (s16le) or divided by 32768 (f32le).
// `count` is the number of samples (all channels, interleaved). Throws ClientError (bad_audio) for
// NaN/infinite floats.
CRAB_RT_CLIENT_API std::vector<std::uint8_t> encode_pcm(const float* samples, std::size_t count, SampleFormat format);
CRAB_RT_CLIENT_API std::vector<std::uint8_t> encode_pcm(const std::int16_t* samples, std::size_t count,
                                                        SampleFormat format);
// One server text message, leniently: unknown fields are ignored, an unknown type gives std::monostate; a
// missing or mistyped required field, non-JSON text or a message without a type throws ClientError
// (bad_message).
CRAB_RT_CLIENT_API ServerMessage parse_server_message(std::string_view text);

// ---- the client ----------------------------------------------------------------------------------------------

// Every callback runs on the client's I/O thread, one at a time, in the server's order. A callback must not
// block for long (it holds up the reading of the connection) and must not call wait() or destroy the client.
// An exception thrown by a callback is caught and reported to on_error (code "callback", not fatal).
struct Callbacks {
    std::function<void(const Ready&)> on_ready;
    std::function<void(const SpeechStart&)> on_speech_start;
    std::function<void(const SpeechEnd&)> on_speech_end;
    std::function<void(const Event&)> on_event;
    std::function<void(const Error&)> on_error;   // fatal errors once per stream; non-fatal ones any number
    std::function<void(const Done&)> on_done;
    std::function<void()> on_closed;              // last, exactly once after start(): the stream is over
};

enum class SendStatus {
    queued,         // on its way
    dropped,        // the send queue was full (see Options::max_queued_audio_s); counted in Stats
    not_accepting,  // before start(), after finish() or close(), or the stream ended
    bad_audio,      // not whole sample frames, NaN/infinite floats, or raw bytes not whole frames
};
CRAB_RT_CLIENT_API const char* to_string(SendStatus status) noexcept;

enum class State { idle, connecting, streaming, finishing, closed };
CRAB_RT_CLIENT_API const char* to_string(State state) noexcept;

struct Stats {
    std::uint64_t queued_bytes = 0;    // waiting in the send queue now
    std::uint64_t sent_bytes = 0;      // audio written to the connection
    std::uint64_t sent_messages = 0;   // binary messages written
    std::uint64_t dropped_calls = 0;   // send_audio calls dropped because the queue was full
    std::uint64_t dropped_bytes = 0;   // and their audio
};

struct Result {
    bool ok = false;             // the stream ended with `done` and no fatal error
    std::optional<Done> done;    // when the server sent it
    std::optional<Error> error;  // the fatal error, when there was one
};

class CRAB_RT_CLIENT_API Client {
public:
    Client(Options options, Callbacks callbacks);
    ~Client();  // close() and wait for the I/O thread
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Check the options and start connecting (in the background). False when the options are invalid (on_error
    // and on_closed have then been called) or start() was called before.
    bool start();

    // Queue audio (thread-safe; any number of threads; each call's audio stays contiguous on the wire). `count`
    // is the number of samples, all channels interleaved: a multiple of `channels`. Converted to the declared
    // format in the caller's thread. Audio queued before `ready` is sent when it arrives.
    SendStatus send_audio(const std::int16_t* samples, std::size_t count);
    SendStatus send_audio(const float* samples, std::size_t count);
    // Raw PCM bytes in the declared format (whole sample frames).
    SendStatus send_pcm(const void* data, std::size_t bytes);

    // End of audio: the queued audio is sent, then `stop`; the server sends the last events, `done`, and closes.
    // False when the stream is not streaming (never started, already finished, or over).
    bool finish();
    // Wait until the stream is over (on_closed has returned); timeout_s < 0: no limit. True when it is over.
    // Returns false at once when called from a callback.
    bool wait(double timeout_s = -1.0);
    // Abort: close the connection now (no `stop`, events in flight are lost); idempotent. Before `done`, the
    // stream ends with a "closed" error. From another thread than the I/O thread, returns once it is over.
    void close();

    State state() const;
    Stats stats() const;
    std::optional<Ready> ready() const;
    Result result() const;  // meaningful once the stream is over
    const Options& options() const noexcept;

    struct Impl;

private:
    Impl* impl_;
};

}  // namespace crab_rt
