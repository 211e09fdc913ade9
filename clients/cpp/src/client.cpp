// crab_rt::Client: the protocol logic of one stream, on a private I/O thread (an asio::io_context), over a
// Transport (transport.hpp). The callers' threads only touch the send queue and the state, under mutexes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "crab_rt/client.hpp"
#include "internal.hpp"
#include "transport.hpp"

namespace crab_rt {

namespace asio = boost::asio;

struct Client::Impl final : detail::TransportHost {
    Impl(Options o, Callbacks c) : options(std::move(o)), callbacks(std::move(c)), ready_timer(ioc) {}

    ~Impl() override = default;

    // ---- set once by start() --------------------------------------------------------------------------------
    Options options;
    Callbacks callbacks;
    Url url;
    std::string address;
    std::string start_json;
    std::size_t frame = 2;
    std::size_t max_queue_bytes = 0;

    asio::io_context ioc;
    asio::steady_timer ready_timer;
    std::unique_ptr<detail::Transport> transport;
    std::thread thread;
    std::atomic<std::thread::id> io_thread_id{};
    std::atomic<bool> orphaned{false};  // the Client was destroyed on the I/O thread: the thread deletes this

    // ---- the send queue (callers' threads and the I/O thread) ------------------------------------------------
    std::mutex queue_mutex;
    std::condition_variable queue_room;
    std::deque<std::vector<std::uint8_t>> queue;
    std::uint64_t queued_bytes = 0;
    bool accepting = false;
    bool stop_requested = false;
    bool kick_posted = false;
    Stats stats_;

    // ---- state and result (any thread) ----------------------------------------------------------------------
    mutable std::mutex state_mutex;
    std::condition_variable state_changed;
    State state_ = State::idle;
    bool started = false;
    bool over = false;  // on_closed has returned
    std::optional<Ready> ready_;
    Result result_;

    // ---- the I/O thread's own ------------------------------------------------------------------------------
    bool is_ready = false;
    bool ended = false;        // finalize() ran
    bool aborted_here = false; // close() was called before the end
    bool writing = false;
    bool write_failed = false;
    bool stop_sent = false;
    std::vector<std::uint8_t> current;  // the chunk being written, message by message
    std::size_t current_offset = 0;
    std::string stop_json = "{\"type\": \"stop\"}";
    std::optional<Error> fatal;          // the first fatal error (reported when it happened)
    std::optional<Done> done;

    bool on_io_thread() const { return std::this_thread::get_id() == io_thread_id.load(); }

    void set_state(State s) {
        std::lock_guard<std::mutex> lock(state_mutex);
        if (state_ != State::closed) state_ = s;
    }

    // ---- callbacks: exceptions never escape ----------------------------------------------------------------

    void report(const Error& e) {
        if (!callbacks.on_error || orphaned.load()) return;
        try {
            callbacks.on_error(e);
        } catch (...) {  // an on_error that throws is not reported again (it would loop)
        }
    }

    template <class F, class... Args>
    void call(const char* name, F& f, const Args&... args) {
        if (!f || orphaned.load()) return;  // no callbacks once the Client is gone
        std::string what;
        try {
            f(args...);
            return;
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
            what = "an exception that is not a std::exception";
        }
        Error e;
        e.code = "callback";
        e.message = address + ": the " + name + " callback threw: " + what;
        e.fatal = false;
        report(e);
    }

    // ---- the stream ---------------------------------------------------------------------------------------

    void begin() {
        transport = url.tls ? detail::make_tls_transport(ioc, *this, url, options)
                            : detail::make_plain_transport(ioc, *this, url, options);
        if (!transport) {  // validate_options refuses wss:// without TLS; kept as a guard
            Error e{"tls", "wss:// is not supported: this crab_rt_client was built without TLS", true, 0, 0};
            fatal = e;
            report(e);
            return finalize();
        }
        transport->open();
    }

    void on_open(std::optional<Error> error) override {
        if (error) {
            if (aborted_here) {
                error->code = "closed";
                error->message = address + ": the client was closed before the connection opened";
            }
            fatal = *error;
            report(*error);
            return finalize();
        }
        transport->write(true, start_json.data(), start_json.size());
        writing = true;
        ready_timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(options.open_timeout_s)));
        ready_timer.async_wait([this](const boost::system::error_code& ec) {
            if (ec || is_ready || ended || fatal) return;
            char buf[32];
            std::snprintf(buf, sizeof buf, "%g", options.open_timeout_s);
            fail_now("timeout", address + ": no ready message within " + buf + " s of start");
        });
    }

    // A client-side fatal error while connected: report it and close the connection (the end follows).
    void fail_now(const char* code, std::string message, bool protocol_error = false) {
        if (!fatal) {
            Error e;
            e.code = code;
            e.message = std::move(message);
            fatal = e;
            report(e);
        }
        stop_accepting();
        if (protocol_error && !writing) {
            transport->close(1002, "protocol error");
        } else {
            transport->abort();
        }
    }

    void on_message(bool text, std::string data) override {
        if (ended) return;
        if (!text)
            return fail_now("bad_message", address + ": the server sent a binary message (" +
                                               std::to_string(data.size()) + " bytes): protocol 1 sends JSON text only",
                            true);
        ServerMessage msg;
        try {
            msg = parse_server_message(data);
        } catch (const ClientError& e) {
            return fail_now("bad_message", address + ": " + e.error().message, true);
        }
        if (!is_ready) {
            if (auto* r = std::get_if<Ready>(&msg)) {
                is_ready = true;
                ready_timer.cancel();
                {
                    std::lock_guard<std::mutex> lock(state_mutex);
                    ready_ = *r;
                    if (state_ == State::connecting) state_ = State::streaming;
                }
                call("on_ready", callbacks.on_ready, *r);
                kick();
                return;
            }
            if (auto* e = std::get_if<ServerError>(&msg)) {
                ready_timer.cancel();
                if (!fatal) {
                    Error err{e->code, address + ": the server refused the stream: " + e->code + ": " + e->message,
                              true, 0, 0};
                    fatal = err;
                    report(err);
                }
                stop_accepting();
                return;  // the server closes the connection
            }
            if (std::holds_alternative<std::monostate>(msg)) return;
            static const char* const names[] = {"", "ready", "speech_start", "speech_end", "event", "error", "done"};
            return fail_now("bad_message", address + ": expected a ready message first, got '" +
                                               names[msg.index()] + "'", true);
        }
        std::visit(
            [this](auto& m) {
                using T = std::decay_t<decltype(m)>;
                if constexpr (std::is_same_v<T, SpeechStart>) {
                    call("on_speech_start", callbacks.on_speech_start, m);
                } else if constexpr (std::is_same_v<T, SpeechEnd>) {
                    call("on_speech_end", callbacks.on_speech_end, m);
                } else if constexpr (std::is_same_v<T, Event>) {
                    call("on_event", callbacks.on_event, m);
                } else if constexpr (std::is_same_v<T, ServerError>) {
                    Error err{m.code, "", m.fatal, 0, 0};
                    if (m.fatal) {
                        if (fatal) return;
                        err.message = address + ": the server ended the stream with " + m.code + ": " + m.message;
                        fatal = err;
                        stop_accepting();
                    } else {
                        err.message = address + ": " + m.code + ": " + m.message;
                    }
                    report(err);
                } else if constexpr (std::is_same_v<T, Done>) {
                    done = m;
                    stop_accepting();
                    call("on_done", callbacks.on_done, m);
                } else if constexpr (std::is_same_v<T, Ready>) {
                    // a second ready: ignored
                }
            },
            msg);
    }

    void on_read_end(detail::ReadEnd end) override {
        if (ended) return;
        const int code = end.close_frame ? end.code : 1006;
        if (fatal) {
            if (fatal->code != "timeout" && fatal->code != "bad_message" && fatal->close_code == 0) {
                fatal->close_code = code;
                if (is_ready) fatal->message += " (closed with code " + std::to_string(code) + ")";
            }
        } else if (done) {
            // the orderly end
        } else {
            Error e;
            e.code = "closed";
            e.close_code = code;
            if (aborted_here || end.aborted) {
                e.message = address + ": the client was closed before the server sent done";
            } else {
                std::string text;
                if (end.close_frame && code == 1009) {
                    text = "code 1009, message too big: a message exceeded the server's max_message_bytes";
                } else if (!end.close_frame) {
                    text = "the connection was lost (no close frame, code 1006)";
                } else {
                    text = "code " + std::to_string(code) + (end.reason.empty() ? "" : ": " + end.reason);
                }
                e.message = address + ": the server closed the connection " +
                            (is_ready ? "before done" : "before ready") + " (" + text + ")";
            }
            fatal = e;
            report(e);
        }
        finalize();
    }

    void on_written(bool ok, std::size_t bytes) override {
        writing = false;
        if (!ok) {
            write_failed = true;  // the read side sees why the connection ended
            return;
        }
        if (!current.empty()) {
            std::lock_guard<std::mutex> lock(queue_mutex);
            stats_.sent_bytes += bytes;
            stats_.sent_messages += 1;
            if (current_offset >= current.size()) {
                current.clear();
                current_offset = 0;
            }
        }
        kick();
    }

    // The writer: the next message of the current chunk, the next chunk, or `stop`.
    void kick() {
        if (writing || !is_ready || write_failed || ended || !transport) return;
        if (current.empty()) {
            bool send_stop = false;
            {
                std::lock_guard<std::mutex> lock(queue_mutex);
                if (!queue.empty()) {
                    current = std::move(queue.front());
                    queue.pop_front();
                    current_offset = 0;
                    queued_bytes -= current.size();
                    queue_room.notify_all();
                } else if (stop_requested && !stop_sent) {
                    send_stop = true;
                }
            }
            if (send_stop) {
                stop_sent = true;
                writing = true;
                transport->write(true, stop_json.data(), stop_json.size());
                return;
            }
            if (current.empty()) return;
        }
        std::size_t step = static_cast<std::size_t>(std::max<std::int64_t>(ready_->max_message_bytes, 1));
        step -= step % frame;
        if (step == 0) {
            return fail_now("bad_message", address + ": the server's max_message_bytes (" +
                                               std::to_string(ready_->max_message_bytes) +
                                               ") is less than one sample frame (" + std::to_string(frame) +
                                               " bytes)");
        }
        const std::size_t n = std::min(step, current.size() - current_offset);
        const std::uint8_t* data = current.data() + current_offset;
        current_offset += n;
        writing = true;
        transport->write(false, data, n);
    }

    void stop_accepting() {
        std::lock_guard<std::mutex> lock(queue_mutex);
        accepting = false;
        queue_room.notify_all();
    }

    void abort_here() {
        if (ended) return;
        aborted_here = true;
        ready_timer.cancel();
        stop_accepting();
        if (transport) transport->abort();
    }

    void finalize() {
        if (ended) return;
        ended = true;
        ready_timer.cancel();
        {
            std::lock_guard<std::mutex> lock(queue_mutex);
            accepting = false;
            queue.clear();
            queued_bytes = 0;
            queue_room.notify_all();
        }
        {
            std::lock_guard<std::mutex> lock(state_mutex);
            state_ = State::closed;
            result_.done = done;
            result_.error = fatal;
            result_.ok = done.has_value() && !fatal.has_value();
        }
        call("on_closed", callbacks.on_closed);
        {
            std::lock_guard<std::mutex> lock(state_mutex);
            over = true;
        }
        state_changed.notify_all();
    }

    void thread_main() {
        io_thread_id.store(std::this_thread::get_id());
        for (;;) {
            try {
                ioc.run();
                break;
            } catch (const std::exception& e) {  // not expected: every handler catches; keep the thread alive
                Error err{"internal", address + ": client error: " + e.what(), true, 0, 0};
                if (!fatal) {
                    fatal = err;
                    report(err);
                }
                if (transport) transport->abort();
            } catch (...) {
                if (transport) transport->abort();
            }
        }
        if (!ended) finalize();
        if (orphaned.load()) delete this;
    }

    void post_kick() {  // queue_mutex held
        if (kick_posted) return;
        kick_posted = true;
        asio::post(ioc, [this] {
            {
                std::lock_guard<std::mutex> lock(queue_mutex);
                kick_posted = false;
            }
            kick();
        });
    }

    SendStatus enqueue(std::vector<std::uint8_t>&& data) {
        std::unique_lock<std::mutex> lock(queue_mutex);
        if (!accepting) return SendStatus::not_accepting;
        if (data.empty()) return SendStatus::queued;
        while (queued_bytes > 0 && queued_bytes + data.size() > max_queue_bytes) {
            if (!options.block_when_full || on_io_thread()) {
                stats_.dropped_calls += 1;
                stats_.dropped_bytes += data.size();
                return SendStatus::dropped;
            }
            queue_room.wait(lock);
            if (!accepting) return SendStatus::not_accepting;
        }
        queued_bytes += data.size();
        queue.push_back(std::move(data));
        post_kick();
        return SendStatus::queued;
    }
};

// ---- Client ----------------------------------------------------------------------------------------------------

Client::Client(Options options, Callbacks callbacks) : impl_(new Impl(std::move(options), std::move(callbacks))) {}

Client::~Client() {
    Impl* impl = impl_;
    if (impl == nullptr) return;
    if (impl->thread.joinable() && impl->on_io_thread()) {
        // Destroyed from one of its own callbacks: the I/O thread finishes the stream and deletes the Impl.
        impl->orphaned.store(true);
        impl->abort_here();
        impl->thread.detach();
        return;
    }
    close();
    if (impl->thread.joinable()) impl->thread.join();
    delete impl;
}

bool Client::start() {
    Impl& m = *impl_;
    {
        std::lock_guard<std::mutex> lock(m.state_mutex);
        if (m.started) return false;
        m.started = true;
    }
    try {
        validate_options(m.options);
        m.url = parse_url(m.options.url);
    } catch (const ClientError& e) {
        m.address = m.options.url;
        m.fatal = e.error();
        m.report(e.error());
        m.finalize();
        return false;
    }
    m.address = m.url.address();
    m.start_json = start_message(m.options);
    m.frame = detail::frame_bytes(m.options.format, m.options.channels);
    const double bytes = m.options.max_queued_audio_s * m.options.sample_rate * static_cast<double>(m.frame);
    m.max_queue_bytes = static_cast<std::size_t>(std::max(bytes, static_cast<double>(m.frame)));
    {
        std::lock_guard<std::mutex> lock(m.queue_mutex);
        m.accepting = true;
    }
    m.set_state(State::connecting);
    asio::post(m.ioc, [impl = &m] { impl->begin(); });
    m.thread = std::thread([impl = &m] { impl->thread_main(); });
    return true;
}

SendStatus Client::send_audio(const std::int16_t* samples, std::size_t count) {
    const auto channels = static_cast<std::size_t>(impl_->options.channels);
    if (channels == 0 || count % channels != 0 || (samples == nullptr && count > 0)) return SendStatus::bad_audio;
    {
        std::lock_guard<std::mutex> lock(impl_->queue_mutex);
        if (!impl_->accepting) return SendStatus::not_accepting;
    }
    return impl_->enqueue(encode_pcm(samples, count, impl_->options.format));
}

SendStatus Client::send_audio(const float* samples, std::size_t count) {
    const auto channels = static_cast<std::size_t>(impl_->options.channels);
    if (channels == 0 || count % channels != 0 || (samples == nullptr && count > 0)) return SendStatus::bad_audio;
    {
        std::lock_guard<std::mutex> lock(impl_->queue_mutex);
        if (!impl_->accepting) return SendStatus::not_accepting;
    }
    try {
        return impl_->enqueue(encode_pcm(samples, count, impl_->options.format));
    } catch (const ClientError&) {
        return SendStatus::bad_audio;
    }
}

SendStatus Client::send_pcm(const void* data, std::size_t bytes) {
    const std::size_t frame = detail::frame_bytes(impl_->options.format, impl_->options.channels);
    if (bytes % frame != 0 || (data == nullptr && bytes > 0)) return SendStatus::bad_audio;
    const auto* p = static_cast<const std::uint8_t*>(data);
    return impl_->enqueue(std::vector<std::uint8_t>(p, p + bytes));
}

bool Client::finish() {
    Impl& m = *impl_;
    std::lock_guard<std::mutex> lock(m.queue_mutex);
    if (!m.accepting) return false;
    m.accepting = false;
    m.stop_requested = true;
    m.queue_room.notify_all();
    m.set_state(State::finishing);
    m.post_kick();
    return true;
}

bool Client::wait(double timeout_s) {
    Impl& m = *impl_;
    if (m.on_io_thread()) return false;
    std::unique_lock<std::mutex> lock(m.state_mutex);
    if (!m.started) return true;
    if (timeout_s < 0) {
        m.state_changed.wait(lock, [&] { return m.over; });
        return true;
    }
    return m.state_changed.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return m.over; });
}

void Client::close() {
    Impl& m = *impl_;
    {
        std::lock_guard<std::mutex> lock(m.state_mutex);
        if (!m.started || m.over) return;
    }
    if (m.on_io_thread()) {
        m.abort_here();
        return;
    }
    {
        std::lock_guard<std::mutex> lock(m.queue_mutex);
        m.accepting = false;
        m.queue_room.notify_all();
    }
    asio::post(m.ioc, [impl = &m] { impl->abort_here(); });
    wait();
}

State Client::state() const {
    std::lock_guard<std::mutex> lock(impl_->state_mutex);
    return impl_->state_;
}

Stats Client::stats() const {
    std::lock_guard<std::mutex> lock(impl_->queue_mutex);
    Stats s = impl_->stats_;
    s.queued_bytes = impl_->queued_bytes;
    return s;
}

std::optional<Ready> Client::ready() const {
    std::lock_guard<std::mutex> lock(impl_->state_mutex);
    return impl_->ready_;
}

Result Client::result() const {
    std::lock_guard<std::mutex> lock(impl_->state_mutex);
    return impl_->result_;
}

const Options& Client::options() const noexcept { return impl_->options; }

}  // namespace crab_rt
