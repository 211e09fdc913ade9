// The Beast transport, a template over the stream below the WebSocket (TCP, or TLS over TCP). Included by
// transport_plain.cpp and transport_tls.cpp only, which instantiate it (in parallel, with make -j).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include "internal.hpp"
#include "transport.hpp"

namespace crab_rt::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using tcp = asio::ip::tcp;

// Holds what must be built before the WebSocket stream (the TLS context); empty for plain TCP.
template <class Next>
struct StreamParts;

// `Next`: beast::tcp_stream or beast::ssl_stream<beast::tcp_stream>.
template <class Next>
class BeastTransport final : public Transport, private StreamParts<Next> {
public:
    BeastTransport(asio::io_context& ioc, TransportHost& host, const Url& url, const Options& options)
        : StreamParts<Next>(),
          host_(host),
          url_(url),
          address_(url.address()),
          token_(options.token),
          ca_file_(options.ca_file),
          open_timeout_(options.open_timeout_s),
          resolver_(ioc),
          ws_(this->make_stream(ioc)),
          timer_(ioc) {}

    void open() override {
        timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(open_timeout_)));
        timer_.async_wait([this](beast::error_code ec) { on_timer(ec); });
        resolver_.async_resolve(url_.host, std::to_string(url_.port),
                                [this](beast::error_code ec, tcp::resolver::results_type results) {
                                    on_resolve(ec, std::move(results));
                                });
    }

    void write(bool text, const void* data, std::size_t bytes) override {
        ws_.text(text);
        ws_.async_write(asio::buffer(data, bytes),
                        [this](beast::error_code ec, std::size_t n) { host_.on_written(!ec, n); });
    }

    void close(int code, const std::string& reason) override {
        if (aborted_ || closing_) return;
        closing_ = true;
        ws_.async_close(websocket::close_reason(static_cast<websocket::close_code>(code), reason),
                        [this](beast::error_code ec) {
                            if (ec) abort();  // the read ends with it
                        });
    }

    void abort() override {
        if (aborted_) return;
        aborted_ = true;
        timer_.cancel();
        resolver_.cancel();
        beast::get_lowest_layer(ws_).close();
    }

private:
    std::string seconds() const {  // as Python's f"{open_timeout:g}"
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", open_timeout_);
        return buf;
    }

    void fail(const char* code, std::string message, int status = 0) {
        opened_ = true;  // the open phase is over
        timer_.cancel();
        Error e;
        e.code = code;
        e.message = std::move(message);
        e.http_status = status;
        e.fatal = true;
        beast::get_lowest_layer(ws_).close();
        host_.on_open(std::move(e));
    }

    bool phase_failed(beast::error_code ec) {
        if (!ec && !aborted_ && !timed_out_) return false;
        if (timed_out_) {
            fail("timeout", address_ + ": no WebSocket handshake within " + seconds() + " s");
        } else if (aborted_) {
            fail("closed", address_ + ": the client was closed before the connection opened");
        } else {
            return false;  // the caller reports its own error
        }
        return true;
    }

    void on_timer(beast::error_code ec) {
        if (ec == asio::error::operation_aborted || opened_ || aborted_) return;
        timed_out_ = true;
        resolver_.cancel();
        beast::get_lowest_layer(ws_).close();
    }

    void on_resolve(beast::error_code ec, tcp::resolver::results_type results) {
        if (phase_failed(ec)) return;
        if (ec) return fail("connect", "cannot connect to " + address_ + ": cannot resolve " + url_.host + " (" +
                                           ec.message() + ")");
        beast::get_lowest_layer(ws_).async_connect(
            results, [this](beast::error_code e, const tcp::endpoint&) { on_connect(e); });
    }

    void on_connect(beast::error_code ec) {
        if (phase_failed(ec)) return;
        if (ec == asio::error::connection_refused)
            return fail("connect", "cannot connect to " + address_ +
                                       ": connection refused (is `crab-rt serve` running there?)");
        if (ec) return fail("connect", "cannot connect to " + address_ + ": " + ec.message());
        beast::error_code ignored;
        // Small messages (events, 32 ms of audio) go out at once: no Nagle delay (asyncio does the same).
        beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true), ignored);
        if constexpr (std::is_same_v<Next, beast::tcp_stream>) {
            handshake();
        } else {
            std::string why;
            if (!this->prepare_tls(ws_.next_layer(), url_.host, ca_file_, why))
                return fail("tls", address_ + ": " + why);
            this->async_tls_handshake(ws_.next_layer(), [this](beast::error_code e) {
                if (phase_failed(e)) return;
                if (e) return fail("tls", address_ + ": TLS handshake failed: " + this->tls_reason(e));
                handshake();
            });
        }
    }

    void handshake() {
        // No timers inside Beast: ours (timer_) covers the handshake, and a pending Beast timer would keep the
        // I/O thread alive after an abort until it expired.
        websocket::stream_base::timeout opt{};
        opt.handshake_timeout = websocket::stream_base::none();
        opt.idle_timeout = websocket::stream_base::none();
        opt.keep_alive_pings = false;
        ws_.set_option(opt);
        const auto token = token_;
        ws_.set_option(websocket::stream_base::decorator([token](websocket::request_type& req) {
            req.set(http::field::user_agent, std::string("crab-rt-cpp/") + crab_rt::version());
            if (token) req.set(http::field::authorization, "Bearer " + *token);
        }));
        const std::string host = url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host;
        const bool default_port = url_.port == (url_.tls ? 443 : 80);
        ws_.async_handshake(response_, default_port ? host : host + ":" + std::to_string(url_.port), url_.target,
                            [this](beast::error_code ec) { on_handshake(ec); });
    }

    static std::string one_line(const std::string& body) {
        std::string out;
        bool space = false;
        for (char c : body) {
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v') {
                space = !out.empty();
            } else {
                if (space) out += ' ';
                space = false;
                out += c;
            }
        }
        if (out.size() > 300) out.resize(300);
        return out.empty() ? "(no text)" : out;
    }

    void on_handshake(beast::error_code ec) {
        if (phase_failed(ec)) return;
        const int status = static_cast<int>(response_.result_int());
        if (ec && status != 0 && status != 101) {
            const std::string text = one_line(response_.body());
            if (status == 401)
                return fail("unauthorized", address_ + ": unauthorized (HTTP 401): " + text + "; check the token",
                            status);
            if (status == 503)
                return fail("unavailable", address_ + ": server unavailable (HTTP 503): " + text + "; retry later",
                            status);
            return fail("refused", address_ + ": the server refused the WebSocket connection with HTTP " +
                                       std::to_string(status) + ": " + text, status);
        }
        if (ec) return fail("refused", address_ + ": WebSocket handshake failed: " + ec.message());
        opened_ = true;
        timer_.cancel();
        host_.on_open(std::nullopt);
        if (!aborted_) read();
    }

    void read() {
        ws_.async_read(buffer_, [this](beast::error_code ec, std::size_t) { on_read(ec); });
    }

    void on_read(beast::error_code ec) {
        if (ec) {
            ReadEnd end;
            if (ec == websocket::error::closed) {
                end.close_frame = true;
                end.code = ws_.reason().code;
                end.reason = std::string(ws_.reason().reason.data(), ws_.reason().reason.size());
            } else if (aborted_) {
                end.aborted = true;
            } else {
                end.what = ec.message();
            }
            beast::get_lowest_layer(ws_).close();
            host_.on_read_end(std::move(end));
            return;
        }
        const bool text = ws_.got_text();
        std::string data = beast::buffers_to_string(buffer_.data());
        buffer_.consume(buffer_.size());
        host_.on_message(text, std::move(data));
        read();  // after abort() or close() it ends at once, with the reason
    }

    TransportHost& host_;
    Url url_;
    std::string address_;
    std::optional<std::string> token_;
    std::string ca_file_;
    double open_timeout_;
    tcp::resolver resolver_;
    websocket::stream<Next> ws_;
    asio::steady_timer timer_;
    beast::flat_buffer buffer_;
    websocket::response_type response_;
    bool opened_ = false;
    bool timed_out_ = false;
    bool aborted_ = false;
    bool closing_ = false;
};

}  // namespace crab_rt::detail
