// crab-rt-cpp-bench: the client-side end-of-speech-to-event latency of crab_rt::Client
// (benchmarks/cpp_client_latency.py runs it beside the Python client on the same server).
//
// The file is sent as live audio: chunk_ms chunks, each handed to send_audio when its audio would have been
// heard (1x, from the first chunk). For each event, latency = the time the event reached the callback minus
// the time the chunk holding its end of speech (speech_end.time_s, where the silence began) was handed to
// send_audio. One JSON line per event on stdout:
//   {"utterance_id": 0, "client_ms": 431.2, "server_end_to_event_ms": 35.1, "speech_end_s": 2.21}
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sndfile.h>

#include "crab_rt/client.hpp"

namespace {

using Clock = std::chrono::steady_clock;

int fail(const std::string& message) {
    std::fprintf(stderr, "crab-rt-cpp-bench: error: %s\n", message.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string url, input, stream_id = "bench";
    double chunk_ms = 32.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string arg = argv[i];
        if (arg == "--url") url = argv[i + 1];
        else if (arg == "--input") input = argv[i + 1];
        else if (arg == "--chunk-ms") chunk_ms = std::atof(argv[i + 1]);
        else if (arg == "--stream-id") stream_id = argv[i + 1];
        else return fail("unknown argument " + arg);
    }
    if (url.empty() || input.empty() || !(chunk_ms > 0))
        return fail("usage: crab-rt-cpp-bench --url URL --input FILE [--chunk-ms 32] [--stream-id ID]");
    SF_INFO info{};
    SNDFILE* file = sf_open(input.c_str(), SFM_READ, &info);
    if (file == nullptr) return fail("--input " + input + ": " + sf_strerror(nullptr));
    std::vector<float> audio(static_cast<std::size_t>(info.frames) * static_cast<std::size_t>(info.channels));
    sf_readf_float(file, audio.data(), info.frames);
    sf_close(file);

    const auto rate = static_cast<std::size_t>(info.samplerate);
    const auto channels = static_cast<std::size_t>(info.channels);
    const auto chunk = static_cast<std::size_t>(std::lround(static_cast<double>(rate) * chunk_ms / 1000.0));
    std::mutex mutex;
    std::vector<Clock::time_point> sent;         // when chunk i was handed to send_audio
    std::map<std::int64_t, double> speech_end;   // utterance_id -> speech_end.time_s
    std::vector<std::string> lines;

    crab_rt::Options options;
    options.url = url;
    options.sample_rate = static_cast<int>(rate);
    options.channels = static_cast<int>(channels);
    options.format = crab_rt::SampleFormat::f32le;
    options.realtime = true;
    options.stream_id = stream_id;
    crab_rt::Callbacks callbacks;
    callbacks.on_speech_end = [&](const crab_rt::SpeechEnd& s) {
        if (!s.utterance_id) return;
        std::lock_guard<std::mutex> lock(mutex);
        speech_end[*s.utterance_id] = s.time_s;
    };
    callbacks.on_event = [&](const crab_rt::Event& e) {
        const auto now = Clock::now();
        std::lock_guard<std::mutex> lock(mutex);
        const auto it = speech_end.find(e.utterance_id);
        if (it == speech_end.end()) return;  // a forced split: no end of speech
        // The stream's seconds are 16 kHz seconds of what was received: the same seconds as the file's.
        const auto index = static_cast<std::size_t>(it->second * static_cast<double>(rate)) / chunk;
        if (index >= sent.size()) return;
        const double ms = std::chrono::duration<double, std::milli>(now - sent[index]).count();
        char line[256];
        std::snprintf(line, sizeof line,
                      "{\"utterance_id\": %lld, \"client_ms\": %.3f, \"server_end_to_event_ms\": %.3f, "
                      "\"speech_end_s\": %.3f}",
                      static_cast<long long>(e.utterance_id), ms, e.latency("end_to_event"), it->second);
        lines.emplace_back(line);
    };
    callbacks.on_error = [](const crab_rt::Error& e) {
        std::fprintf(stderr, "crab-rt-cpp-bench: %s: %s\n", e.fatal ? "error" : "warning", e.message.c_str());
    };

    crab_rt::Client client(options, callbacks);
    if (!client.start()) return 2;
    while (!client.ready() && client.state() != crab_rt::State::closed)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto start = Clock::now();
    const std::size_t frames = audio.size() / channels;
    for (std::size_t i = 0, k = 0; i < frames; i += chunk, ++k) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(static_cast<double>(i) / rate)));
        const std::size_t n = std::min(chunk, frames - i);
        {
            std::lock_guard<std::mutex> lock(mutex);
            sent.push_back(Clock::now());
        }
        if (client.send_audio(audio.data() + i * channels, n * channels) != crab_rt::SendStatus::queued) break;
    }
    client.finish();
    client.wait();
    const auto result = client.result();
    for (const auto& line : lines) std::printf("%s\n", line.c_str());
    if (!result.ok) return 2;
    return 0;
}
