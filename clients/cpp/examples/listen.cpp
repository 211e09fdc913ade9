// crab-rt-cpp-listen: stream an audio file (libsndfile) or a microphone (PortAudio) to `crab-rt serve` with
// crab_rt::Client, and print the emotion events as `crab-rt client` does: one JSON line per event on stdout
// (the same bytes), a summary on stderr. Errors: one line on stderr, exit code 2 (as `crab-rt client`).
//
//   crab-rt-cpp-listen --url ws://127.0.0.1:8765/ --input samples/jfk.flac
//   crab-rt-cpp-listen --url ws://robot:8765/ --device 0 --token-file token.txt
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sndfile.h>

#ifdef CRAB_RT_HAVE_PORTAUDIO
#include <fcntl.h>
#include <portaudio.h>
#include <unistd.h>
#endif

#include "crab_rt/client.hpp"

namespace {

constexpr const char* kProg = "crab-rt-cpp-listen";
std::atomic<bool> g_interrupted{false};
// Our messages go here: stderr, or its duplicate while a microphone is open (PortAudio's ALSA layer writes its
// diagnostics to file descriptor 2, which is then muted, so that an error stays one line).
std::FILE* g_err = stderr;

void on_signal(int) { g_interrupted.store(true); }

struct UsageError {
    std::string message;
};

int error_exit(const std::string& message) {
    std::fprintf(g_err, "%s: error: %s\n", kProg, message.c_str());
    return 2;
}

void usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: %s [--url URL] (--input FILE | --device N | --list-devices) [options]\n"
                 "\n"
                 "Stream audio to a `crab-rt serve` server and print its emotion events as `crab-rt client` does:\n"
                 "JSON lines on stdout, a summary on stderr.\n"
                 "\n"
                 "  --url URL          ws://HOST:PORT/ or wss://HOST:PORT/ (default ws://127.0.0.1:8765/)\n"
                 "  --input FILE       an audio file libsndfile reads (WAV, FLAC, OGG, ...), sent at its own sample\n"
                 "                     rate and channels (the server resamples and mixes down)\n"
                 "  --realtime         send the file at 1x as live audio (default: as fast as the server takes it)\n"
                 "  --device N|NAME    capture a microphone (PortAudio; `--list-devices`), until Ctrl-C\n"
                 "  --list-devices     list the input devices and exit\n"
                 "  --token-file FILE  file holding the server's bearer token (one line)\n"
                 "  --cafile PEM       CA(s) to trust for a wss:// server (default: the system's)\n"
                 "  --stream-id ID     your name for the stream (default: file, or live for a microphone)\n"
                 "  --language CODE    the ASR language the server must use (default: the server's)\n"
                 "  --show-speech      also print the speech_start / speech_end messages (JSON)\n"
                 "  --provisional      also print a provisional event per utterance (\"stage\": \"provisional\": the\n"
                 "                     voice alone, before ASR; no text), then the final one (protocol 1.1)\n"
                 "  -q, --quiet        no summary\n"
                 "  --version          print the version and exit\n",
                 kProg);
}

std::string read_token_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        std::ifstream probe(path + "/.");
        throw UsageError{"--token-file " + path + (probe ? ": is a folder; give the file holding the token"
                                                         : ": file not found")};
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::string token = ss.str();
    const char* blanks = " \t\r\n\f\v";
    const auto first = token.find_first_not_of(blanks);
    if (first == std::string::npos) throw UsageError{"--token-file " + path + ": the file is empty"};
    token = token.substr(first, token.find_last_not_of(blanks) - first + 1);
    if (token.find_first_of("\r\n") != std::string::npos)
        throw UsageError{"--token-file " + path + ": holds more than one line; the token is one line"};
    return token;
}

// What the callbacks collect, on the client's I/O thread; read by main after wait().
struct Collected {
    std::mutex mutex;
    std::size_t events = 0;
    std::vector<double> end_to_event;
    bool show_speech = false;
};

double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#ifdef CRAB_RT_HAVE_PORTAUDIO
// PortAudio's ALSA and JACK probes write to stderr: muted while PortAudio starts and opens a stream.
class QuietStderr {
public:
    QuietStderr() {
        std::fflush(stderr);
        saved_ = ::dup(2);
        const int null = ::open("/dev/null", O_WRONLY);
        if (null >= 0) {
            ::dup2(null, 2);
            ::close(null);
        }
    }
    ~QuietStderr() {
        std::fflush(stderr);
        if (saved_ >= 0) {
            ::dup2(saved_, 2);
            ::close(saved_);
        }
    }
    QuietStderr(const QuietStderr&) = delete;
    QuietStderr& operator=(const QuietStderr&) = delete;

private:
    int saved_ = -1;
};

// --device N (an index of --list-devices) or NAME (a device's name, or a unique part of it); -1 when none.
int find_input_device(const std::string& device) {
    char* end = nullptr;
    const long index = std::strtol(device.c_str(), &end, 10);
    const int count = Pa_GetDeviceCount();
    auto is_input = [](int i) {
        const PaDeviceInfo* info = Pa_GetDeviceInfo(i);
        return info != nullptr && info->maxInputChannels > 0;
    };
    if (!device.empty() && end != device.c_str() && *end == '\0')
        return index >= 0 && index < count && is_input(static_cast<int>(index)) ? static_cast<int>(index) : -1;
    int found = -1, matches = 0;
    for (int i = 0; i < count; ++i) {
        if (!is_input(i)) continue;
        const std::string name = Pa_GetDeviceInfo(i)->name;
        if (name == device) return i;
        if (name.find(device) != std::string::npos) {
            found = i;
            ++matches;
        }
    }
    return matches == 1 ? found : -1;
}

// Mono 16-bit input from `device` at its low input latency: what the rate probe and the capture stream both ask.
PaStreamParameters mono_input(int device) {
    PaStreamParameters params{};
    params.device = device;
    params.channelCount = 1;
    params.sampleFormat = paInt16;
    params.suggestedLatency = Pa_GetDeviceInfo(device)->defaultLowInputLatency;
    return params;
}

int list_devices() {
    PaError err;
    {
        QuietStderr quiet;
        err = Pa_Initialize();
    }
    if (err != paNoError) return error_exit(std::string("PortAudio cannot start: ") + Pa_GetErrorText(err));
    const int n = Pa_GetDeviceCount();
    for (int i = 0; i < n; ++i) {
        const PaDeviceInfo* info = Pa_GetDeviceInfo(i);
        if (info != nullptr && info->maxInputChannels > 0)
            std::printf("%d\t%s\t(%d channels, %.0f Hz)\n", i, info->name, info->maxInputChannels,
                        info->defaultSampleRate);
    }
    Pa_Terminate();
    return 0;
}

struct Capture {
    crab_rt::Client* client = nullptr;
    int channels = 1;
    std::atomic<std::uint64_t> dropped{0};
};

int capture_callback(const void* input, void*, unsigned long frames, const PaStreamCallbackTimeInfo*,
                     PaStreamCallbackFlags, void* user) {
    auto* capture = static_cast<Capture*>(user);
    // Never blocks: the client queues the audio for its I/O thread (or drops it when the queue is full).
    const auto status = capture->client->send_audio(static_cast<const std::int16_t*>(input),
                                                    frames * static_cast<unsigned long>(capture->channels));
    if (status == crab_rt::SendStatus::dropped) capture->dropped.fetch_add(1);
    return paContinue;
}
#endif

}  // namespace

int main(int argc, char** argv) {
    crab_rt::Options options;
    std::string input, device, token_file;
    bool realtime = false, quiet = false, list = false;
    Collected collected;
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw UsageError{arg + ": expected a value"};
                return argv[++i];
            };
            if (arg == "--url") options.url = value();
            else if (arg == "--input") input = value();
            else if (arg == "--device") device = value();
            else if (arg == "--list-devices") list = true;
            else if (arg == "--realtime") realtime = true;
            else if (arg == "--token-file") token_file = value();
            else if (arg == "--cafile") options.ca_file = value();
            else if (arg == "--stream-id") options.stream_id = value();
            else if (arg == "--language") options.language = value();
            else if (arg == "--show-speech") collected.show_speech = true;
            else if (arg == "--provisional") options.provisional = true;
            else if (arg == "-q" || arg == "--quiet") quiet = true;
            else if (arg == "-h" || arg == "--help") {
                usage(stdout);
                return 0;
            } else if (arg == "--version") {
                std::printf("%s %s\n", kProg, crab_rt::version());
                return 0;
            } else {
                throw UsageError{"unknown argument " + arg + " (see --help)"};
            }
        }
        if (list) {
#ifdef CRAB_RT_HAVE_PORTAUDIO
            return list_devices();
#else
            throw UsageError{"--list-devices: built without PortAudio (apt-get install portaudio19-dev, rebuild)"};
#endif
        }
        if (input.empty() == device.empty()) throw UsageError{"give one of --input FILE or --device N"};
        if (realtime && input.empty()) throw UsageError{"--realtime applies only to --input: a microphone is live"};
        if (!token_file.empty()) options.token = read_token_file(token_file);
        if (!options.ca_file.empty()) {
            std::ifstream ca(options.ca_file);
            if (!ca) throw UsageError{"--cafile " + options.ca_file + ": file not found"};
        }
    } catch (const UsageError& e) {
        return error_exit(e.message);
    }

    // ---- the input ----
    SNDFILE* file = nullptr;
    [[maybe_unused]] int pa_device = -1;
    std::string source_error;  // the microphone stopped
    SF_INFO info{};
    int channels = 1;
    int rate = 16000;
    if (!input.empty()) {
        file = sf_open(input.c_str(), SFM_READ, &info);
        if (file == nullptr) return error_exit("--input " + input + ": cannot read it: " + sf_strerror(nullptr));
        channels = info.channels;
        rate = info.samplerate;
        if (channels < 1 || channels > 8 || rate < 8000 || rate > 192000) {
            sf_close(file);
            return error_exit("--input " + input + ": " + std::to_string(channels) + " channel(s) at " +
                              std::to_string(rate) + " Hz: the server takes 1-8 channels at 8000-192000 Hz");
        }
        options.format = crab_rt::SampleFormat::f32le;
        options.realtime = realtime;
        options.block_when_full = !realtime;  // a file waits for the server; a live source would drop
        if (!options.stream_id) options.stream_id = "file";  // crab-rt listen's names, so the lines are the same
    } else {
#ifndef CRAB_RT_HAVE_PORTAUDIO
        return error_exit("--device: built without PortAudio (apt-get install portaudio19-dev, rebuild)");
#else
        const int own = ::dup(2);  // our messages keep the real stderr; PortAudio's go to /dev/null from now on
        std::FILE* err_stream = own >= 0 ? ::fdopen(own, "w") : nullptr;
        if (err_stream != nullptr) {
            g_err = err_stream;
            std::setvbuf(g_err, nullptr, _IOLBF, 0);
            const int null = ::open("/dev/null", O_WRONLY);
            if (null >= 0) {
                ::dup2(null, 2);
                ::close(null);
            }
        }
        PaError err;
        {
            QuietStderr quiet;
            err = Pa_Initialize();
        }
        if (err != paNoError) return error_exit(std::string("PortAudio cannot start: ") + Pa_GetErrorText(err));
        pa_device = find_input_device(device);
        if (pa_device < 0) {
            Pa_Terminate();
            return error_exit("--device " + device + ": no such input device, or more than one (see --list-devices)");
        }
        // 16 kHz mono when the device takes it (what the server works at), else the device's own rate: the
        // server resamples.
        const PaStreamParameters params = mono_input(pa_device);
        {
            QuietStderr quiet;
            rate = Pa_IsFormatSupported(&params, nullptr, 16000.0) == paFormatIsSupported
                       ? 16000
                       : static_cast<int>(Pa_GetDeviceInfo(pa_device)->defaultSampleRate);
        }
        channels = 1;
#endif
        options.format = crab_rt::SampleFormat::s16le;
        options.realtime = true;
        if (!options.stream_id) options.stream_id = "live";
    }
    options.sample_rate = rate;
    options.channels = channels;

    // ---- the client ----
    crab_rt::Callbacks callbacks;
    callbacks.on_event = [&collected](const crab_rt::Event& e) {
        const std::string line = e.to_json() + "\n";
        std::fwrite(line.data(), 1, line.size(), stdout);
        std::fflush(stdout);
        std::lock_guard<std::mutex> lock(collected.mutex);
        ++collected.events;
        const double ms = e.latency("end_to_event");
        if (ms == ms) collected.end_to_event.push_back(ms);
    };
    callbacks.on_speech_start = [&collected](const crab_rt::SpeechStart& s) {
        if (collected.show_speech) std::printf("%s\n", s.to_json().c_str()), std::fflush(stdout);
    };
    callbacks.on_speech_end = [&collected](const crab_rt::SpeechEnd& s) {
        if (collected.show_speech) std::printf("%s\n", s.to_json().c_str()), std::fflush(stdout);
    };
    callbacks.on_error = [](const crab_rt::Error& e) {
        if (!e.fatal) std::fprintf(g_err, "%s: warning: %s\n", kProg, e.message.c_str());
        // a fatal error is printed once, by main, when the stream is over
    };

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const auto started = std::chrono::steady_clock::now();
    crab_rt::Client client(options, callbacks);
    bool interrupted = false;
    std::uint64_t dropped_chunks = 0;
    if (client.start()) {
        if (file != nullptr) {
            const std::size_t chunk_frames = static_cast<std::size_t>(rate) / 10;  // 100 ms, as crab-rt client
            std::vector<float> buffer(chunk_frames * static_cast<std::size_t>(channels));
            std::uint64_t sent_frames = 0;
            const auto pace_start = std::chrono::steady_clock::now();
            for (;;) {
                if (g_interrupted.load()) {
                    interrupted = true;
                    break;
                }
                const sf_count_t n = sf_readf_float(file, buffer.data(), static_cast<sf_count_t>(chunk_frames));
                if (n <= 0) break;
                if (realtime) {  // 1x: each chunk leaves when its audio would have been heard
                    std::this_thread::sleep_until(
                        pace_start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                      std::chrono::duration<double>(static_cast<double>(sent_frames) / rate)));
                }
                const auto status = client.send_audio(buffer.data(), static_cast<std::size_t>(n) * channels);
                if (status == crab_rt::SendStatus::not_accepting) break;  // the stream ended: the result says why
                if (status == crab_rt::SendStatus::dropped) ++dropped_chunks;
                sent_frames += static_cast<std::uint64_t>(n);
            }
        } else {
#ifdef CRAB_RT_HAVE_PORTAUDIO
            Capture capture;
            capture.client = &client;
            capture.channels = 1;
            PaStream* stream = nullptr;
            const PaDeviceInfo* dev = Pa_GetDeviceInfo(pa_device);
            const PaStreamParameters params = mono_input(pa_device);
            PaError err;
            {
                QuietStderr quiet;
                // 32 ms per callback, as crab-rt client reads a microphone; each callback queues its audio
                err = Pa_OpenStream(&stream, &params, nullptr, rate, static_cast<unsigned long>(rate * 32 / 1000),
                                    paNoFlag, capture_callback, &capture);
                if (err == paNoError) err = Pa_StartStream(stream);
            }
            if (err != paNoError) {
                Pa_Terminate();
                client.close();
                return error_exit("--device " + device + ": cannot capture: " + Pa_GetErrorText(err));
            }
            while (!g_interrupted.load() && client.state() != crab_rt::State::closed) {
                if (Pa_IsStreamActive(stream) != 1) {  // the device went away
                    source_error = "--device " + device + ": the capture stopped (" + dev->name + " went away?)";
                    break;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            interrupted = g_interrupted.load();
            {
                QuietStderr quiet;
                Pa_AbortStream(stream);
                Pa_CloseStream(stream);
                Pa_Terminate();
            }
            dropped_chunks = capture.dropped.load();
#endif
        }
        client.finish();  // false (no effect) when the stream already ended
        while (!client.wait(0.5)) {
        }
    }
    if (file != nullptr) sf_close(file);

    const crab_rt::Result result = client.result();
    if (!result.ok) return error_exit(result.error ? result.error->message : "the stream ended without done");
    const crab_rt::Done& done = *result.done;
    if (done.reason == "drain" && !interrupted && !input.empty()) {
        char audio[32];
        std::snprintf(audio, sizeof audio, "%.1f", done.audio_s);
        return error_exit(options.url + ": the server shut down (drain) after " + audio +
                          " s of audio, before the input ended");
    }
    if (!source_error.empty()) return error_exit(source_error);  // what was heard is printed; then the cause
    if (!quiet) {
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        std::lock_guard<std::mutex> lock(collected.mutex);
        std::fprintf(g_err, "%s%s: utterances %lld  events %zu  audio %.1f s  wall %.1f s  end_to_event p50 %.1f ms\n",
                     interrupted ? "interrupted; " : "", kProg, static_cast<long long>(done.utterances),
                     collected.events, done.audio_s, wall, median(collected.end_to_event));
    }
    if (done.dropped_messages > 0)
        std::fprintf(g_err, "%s: warning: the server dropped %lld message(s) for this stream: they were not read "
                             "fast enough\n", kProg, static_cast<long long>(done.dropped_messages));
    if (dropped_chunks > 0)
        std::fprintf(g_err, "%s: warning: %llu audio chunk(s) were dropped because sending fell behind\n", kProg,
                     static_cast<unsigned long long>(dropped_chunks));
    return 0;
}
