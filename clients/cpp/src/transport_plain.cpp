// ws://: the Beast transport over plain TCP.
#include "transport_impl.hpp"

namespace crab_rt::detail {

template <>
struct StreamParts<beast::tcp_stream> {
    static beast::tcp_stream make_stream(asio::io_context& ioc) { return beast::tcp_stream(ioc); }
};

std::unique_ptr<Transport> make_plain_transport(asio::io_context& ioc, TransportHost& host, const Url& url,
                                                const Options& options) {
    return std::make_unique<BeastTransport<beast::tcp_stream>>(ioc, host, url, options);
}

}  // namespace crab_rt::detail
