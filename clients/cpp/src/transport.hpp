// The WebSocket transport of one stream (Boost.Beast over Boost.Asio, optionally TLS), behind a small interface so
// that the protocol logic (client.cpp) does not depend on the stream type. Every call and every host callback
// happens on the client's I/O thread.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>

#include "crab_rt/client.hpp"

namespace crab_rt::detail {

// How the reading side of a connection ended.
struct ReadEnd {
    bool close_frame = false;  // the server sent a close frame: code and reason hold it
    int code = 1006;
    std::string reason;
    bool aborted = false;      // the transport was aborted here (abort())
    std::string what;          // otherwise: the socket error
};

class TransportHost {
public:
    virtual ~TransportHost() = default;
    // The handshake succeeded (no error) or failed (the error to report: connect, unauthorized, unavailable,
    // refused, tls, timeout). After a failure, nothing else is called.
    virtual void on_open(std::optional<Error> error) = 0;
    // One complete message; reading goes on after the call unless the transport was aborted or closed.
    virtual void on_message(bool text, std::string data) = 0;
    // The connection ended; the last call.
    virtual void on_read_end(ReadEnd end) = 0;
    // The write started by Transport::write completed (ok: written).
    virtual void on_written(bool ok, std::size_t bytes) = 0;
};

class Transport {
public:
    virtual ~Transport() = default;
    // Resolve, connect, (TLS,) WebSocket handshake; then read until the end.
    virtual void open() = 0;
    // One message; at most one write in flight. `data` must stay valid until on_written.
    virtual void write(bool text, const void* data, std::size_t bytes) = 0;
    // A close frame with this code (the server answers and closes).
    virtual void close(int code, const std::string& reason) = 0;
    // Close the socket now; pending operations end (aborted).
    virtual void abort() = 0;
};

std::unique_ptr<Transport> make_plain_transport(boost::asio::io_context& ioc, TransportHost& host, const Url& url,
                                                const Options& options);
// nullptr when the library was built without TLS.
std::unique_ptr<Transport> make_tls_transport(boost::asio::io_context& ioc, TransportHost& host, const Url& url,
                                              const Options& options);

}  // namespace crab_rt::detail
