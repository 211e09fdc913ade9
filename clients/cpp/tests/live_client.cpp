// Live test of the C++ API (linked against the shared library) on a running `crab-rt serve` (live_driver.py
// starts it). A "capture thread" feeds int16 PCM in 20 ms chunks, as a capture callback would (never blocking);
// the first on_event callback throws, which must be reported as a non-fatal "callback" error while the stream
// goes on. Checks the order of the messages, the counts in `done`, the bytes sent, and the transcript.
//
//   crab_rt_live_client --url URL --pcm FILE.s16 --rate 44100 --channels 2 [--token T] [--events N]
//                       [--text "ask not"] [--speed 8]
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "crab_rt/client.hpp"

namespace {

struct Log {
    std::mutex mutex;
    std::vector<std::string> sequence;  // "ready", "start", "end:N", "event:N", "done"
    std::vector<crab_rt::Error> errors;
    std::vector<crab_rt::Event> events;
    std::string text;
    int closed = 0;
    bool thrown = false;
};

std::vector<std::string> g_problems;

void expect(bool ok, const std::string& what) {
    if (!ok) g_problems.push_back(what);
}

}  // namespace

int main(int argc, char** argv) {
    std::string url, pcm_path, token, want_text, want_error;
    int rate = 16000, channels = 1, want_events = -1;
    double speed = 8.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--url") url = v;
        else if (a == "--pcm") pcm_path = v;
        else if (a == "--rate") rate = std::atoi(v.c_str());
        else if (a == "--channels") channels = std::atoi(v.c_str());
        else if (a == "--token") token = v;
        else if (a == "--events") want_events = std::atoi(v.c_str());
        else if (a == "--text") want_text = v;
        else if (a == "--speed") speed = std::atof(v.c_str());
        else if (a == "--expect-error") want_error = v;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    std::ifstream in(pcm_path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::int16_t> pcm(bytes.size() / 2);
    for (std::size_t i = 0; i < pcm.size(); ++i)
        pcm[i] = static_cast<std::int16_t>(static_cast<std::uint16_t>(static_cast<unsigned char>(bytes[2 * i]) |
                                                                      (static_cast<unsigned char>(bytes[2 * i + 1]) << 8)));
    if (pcm.empty()) {
        std::fprintf(stderr, "no audio in %s\n", pcm_path.c_str());
        return 2;
    }

    crab_rt::Options options;
    options.url = url;
    options.sample_rate = rate;
    options.channels = channels;
    options.format = crab_rt::SampleFormat::s16le;
    options.realtime = false;
    options.stream_id = "cpp-api";
    options.max_queued_audio_s = 30.0;
    if (!token.empty()) options.token = token;

    Log log;
    crab_rt::Callbacks cb;
    cb.on_ready = [&](const crab_rt::Ready& r) {
        std::lock_guard<std::mutex> lock(log.mutex);
        log.sequence.push_back("ready");
        expect(r.labels.size() >= 2 && r.stream_id == "cpp-api" && r.sample_rate == rate && r.format == "s16le",
               "ready carries the stream's settings");
    };
    cb.on_speech_start = [&](const crab_rt::SpeechStart&) {
        std::lock_guard<std::mutex> lock(log.mutex);
        log.sequence.push_back("start");
    };
    cb.on_speech_end = [&](const crab_rt::SpeechEnd& s) {
        std::lock_guard<std::mutex> lock(log.mutex);
        log.sequence.push_back("end:" + (s.utterance_id ? std::to_string(*s.utterance_id) : std::string("none")));
    };
    cb.on_event = [&](const crab_rt::Event& e) {
        {
            std::lock_guard<std::mutex> lock(log.mutex);
            log.sequence.push_back("event:" + std::to_string(e.utterance_id));
            log.events.push_back(e);
            log.text += " " + e.text;
            if (log.thrown) return;
            log.thrown = true;
        }
        throw std::runtime_error("deliberate");  // must not end the stream
    };
    cb.on_error = [&](const crab_rt::Error& e) {
        std::lock_guard<std::mutex> lock(log.mutex);
        log.errors.push_back(e);
    };
    cb.on_done = [&](const crab_rt::Done&) {
        std::lock_guard<std::mutex> lock(log.mutex);
        log.sequence.push_back("done");
    };
    cb.on_closed = [&] {
        std::lock_guard<std::mutex> lock(log.mutex);
        ++log.closed;
    };

    crab_rt::Client client(options, cb);
    expect(client.start(), "start() accepts the options");
    std::atomic<int> not_queued{0};
    std::atomic<int> slow_sends{0};
    std::thread capture([&] {
        // 20 ms chunks at `speed` x real time; a capture callback would call send_audio exactly like this.
        const std::size_t chunk = static_cast<std::size_t>(rate / 50) * static_cast<std::size_t>(channels);
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0, k = 0; i < pcm.size(); i += chunk, ++k) {
            std::this_thread::sleep_until(t0 + std::chrono::microseconds(static_cast<long>(20000.0 * k / speed)));
            const auto t = std::chrono::steady_clock::now();
            const auto status = client.send_audio(pcm.data() + i, std::min(chunk, pcm.size() - i));
            if (status != crab_rt::SendStatus::queued) ++not_queued;
            if (status == crab_rt::SendStatus::not_accepting) break;  // the stream ended
            // queueing is a copy under a mutex; 100 ms leaves room for a loaded 2-core machine's scheduler
            if (std::chrono::steady_clock::now() - t > std::chrono::milliseconds(100)) ++slow_sends;
        }
    });
    capture.join();
    if (!want_error.empty()) {
        // The stream must end with exactly one fatal error of this code, through on_error, and no crash.
        client.finish();
        expect(client.wait(120.0), "the stream ends within 120 s");
        const crab_rt::Result result = client.result();
        std::lock_guard<std::mutex> lock(log.mutex);
        int fatal = 0;
        std::string message;
        for (const auto& e : log.errors) {
            if (!e.fatal) continue;
            ++fatal;
            message = e.message;
            expect(e.code == want_error, "error code " + e.code + " (expected " + want_error + "): " + e.message);
        }
        expect(fatal == 1, "one fatal error through on_error, got " + std::to_string(fatal));
        expect(log.closed == 1, "on_closed once");
        expect(!result.ok && result.error && result.error->code == want_error, "the result holds the error");
        for (const auto& p : g_problems) std::fprintf(stderr, "FAILED: %s\n", p.c_str());
        std::printf("crab_rt_live_client: error callback: %s: %s\n", want_error.c_str(), message.c_str());
        return g_problems.empty() ? 0 : 1;
    }
    expect(client.finish(), "finish() while streaming");
    expect(!client.finish(), "a second finish() is refused");
    expect(client.wait(120.0), "the stream ends within 120 s");
    const crab_rt::Result result = client.result();
    const crab_rt::Stats stats = client.stats();
    const std::int16_t one[2] = {0, 0};

    std::lock_guard<std::mutex> lock(log.mutex);
    expect(result.ok, "the stream ends with done and no error" +
                          (result.error ? ": " + result.error->message : std::string()));
    expect(slow_sends.load() == 0, "send_audio never blocked for 100 ms (" + std::to_string(slow_sends.load()) + " did)");
    expect(not_queued.load() == 0, "every send_audio call was queued (" + std::to_string(not_queued.load()) + " not)");
    expect(stats.sent_bytes == pcm.size() * 2, "every byte was sent (" + std::to_string(stats.sent_bytes) + " of " +
                                                   std::to_string(pcm.size() * 2) + ")");
    expect(stats.dropped_calls == 0 && stats.queued_bytes == 0, "nothing dropped, nothing left");
    expect(client.send_audio(one, static_cast<std::size_t>(channels)) == crab_rt::SendStatus::not_accepting,
           "no audio after the end");
    expect(log.closed == 1, "on_closed once");
    expect(!log.sequence.empty() && log.sequence.front() == "ready" && log.sequence.back() == "done",
           "ready first, done last");
    // speech_start / speech_end alternate; an event follows its speech_end; events in utterance order.
    bool in_speech = false;
    std::vector<std::string> ended;
    std::int64_t next_event = 0;
    for (const auto& s : log.sequence) {
        if (s == "start") {
            expect(!in_speech, "speech_start inside speech");
            in_speech = true;
        } else if (s.rfind("end:", 0) == 0) {
            expect(in_speech, "speech_end outside speech");
            in_speech = false;
            ended.push_back(s.substr(4));
        } else if (s.rfind("event:", 0) == 0) {
            const std::string id = s.substr(6);
            expect(id == std::to_string(next_event++), "events in utterance order");
            const bool forced = !log.events.empty() && log.events[static_cast<std::size_t>(next_event - 1)].forced_split;
            expect(forced || std::find(ended.begin(), ended.end(), id) != ended.end(), "event " + id + " after its speech_end");
        }
    }
    if (want_events >= 0)
        expect(static_cast<int>(log.events.size()) == want_events,
               "expected " + std::to_string(want_events) + " events, got " + std::to_string(log.events.size()));
    if (result.done)
        expect(result.done->events == static_cast<std::int64_t>(log.events.size()) && result.done->reason == "stop",
               "done counts the events, reason stop");
    std::size_t callback_errors = 0;
    for (const auto& e : log.errors) {
        if (e.code == "callback" && !e.fatal && e.message.find("the on_event callback threw: deliberate") != std::string::npos)
            ++callback_errors;
        else
            g_problems.push_back("unexpected error: " + e.code + ": " + e.message);
    }
    expect(callback_errors == 1, "one non-fatal callback error for the throwing on_event");
    std::string text = log.text;
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!want_text.empty())
        expect(text.find(want_text) != std::string::npos, "the transcript holds '" + want_text + "': " + log.text);

    for (const auto& p : g_problems) std::fprintf(stderr, "FAILED: %s\n", p.c_str());
    std::printf("crab_rt_live_client: %zu events, %zu messages, %llu bytes sent, transcript:%s\n", log.events.size(),
                log.sequence.size(), static_cast<unsigned long long>(stats.sent_bytes), log.text.c_str());
    return g_problems.empty() ? 0 : 1;
}
