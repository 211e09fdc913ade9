// Test helper: reads server messages (one JSON text per line) on stdin and writes, per line, what
// crab-rt-cpp-listen prints for it: an event's JSON line, a speech message's --show-speech line, "-" for other
// types, or "ERROR <code>: <message>" when the message is refused. live_driver.py compares these lines with
// Python's EmotionEvent.to_json() and json.dumps on random messages, byte for byte.
#include <iostream>
#include <string>
#include <variant>

#include "crab_rt/client.hpp"

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        try {
            const auto msg = crab_rt::parse_server_message(line);
            if (const auto* e = std::get_if<crab_rt::Event>(&msg)) {
                std::cout << e->to_json() << "\n";
            } else if (const auto* s = std::get_if<crab_rt::SpeechStart>(&msg)) {
                std::cout << s->to_json() << "\n";
            } else if (const auto* s2 = std::get_if<crab_rt::SpeechEnd>(&msg)) {
                std::cout << s2->to_json() << "\n";
            } else {
                std::cout << "-\n";
            }
        } catch (const crab_rt::ClientError& e) {
            std::cout << "ERROR " << e.error().code << ": " << e.error().message << "\n";
        }
    }
    return 0;
}
