// Uses the installed crab_rt_client: its header, its types, and its error callback (nothing listens on the URL).
#include <cstdio>
#include <string>
#include <variant>

#include <crab_rt/client.hpp>

int main() {
    crab_rt::Options options;
    options.url = "ws://127.0.0.1:1/";  // nothing listens on port 1
    options.format = crab_rt::SampleFormat::s16le;
    std::string code;
    crab_rt::Callbacks callbacks;
    callbacks.on_error = [&code](const crab_rt::Error& e) { code = e.code; };
    crab_rt::Client client(options, callbacks);
    client.start();
    client.wait();
    std::printf("crab_rt_client %s: error callback: %s\n", crab_rt::version(), code.c_str());
    bool caught = false;
    try {
        crab_rt::parse_url("http://not-a-websocket/");
    } catch (const crab_rt::ClientError& e) {  // the exception type crosses the shared library's boundary
        caught = e.error().code == "invalid_url";
    }
    const auto event = crab_rt::parse_server_message(
        R"({"type": "event", "stream_id": "s", "utterance_id": 0, "start_s": 0.5, "end_s": 1.25, "text": "",)"
        R"( "text_flagged": false, "label": "happy", "confidence": 0.7, "probabilities": {"happy": 0.7, "sad": 0.3},)"
        R"( "latency_ms": {}, "forced_split": false})");
    const bool parsed = std::get<crab_rt::Event>(event).label == "happy";
    return code == "connect" && caught && parsed ? 0 : 1;
}
