// wss://: the Beast transport over TLS (OpenSSL), or nothing in a build without TLS.
#include "transport.hpp"

#ifdef CRAB_RT_CLIENT_HAVE_TLS

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>

#include "transport_impl.hpp"

namespace crab_rt::detail {

using TlsStream = beast::ssl_stream<beast::tcp_stream>;

template <>
struct StreamParts<TlsStream> {
    asio::ssl::context ctx{asio::ssl::context::tls_client};

    TlsStream make_stream(asio::io_context& ioc) { return TlsStream(ioc, ctx); }

    // Trust the CA file (or the system's CAs), check the certificate's name (or IP address), send SNI.
    bool prepare_tls(TlsStream& stream, const std::string& host, const std::string& ca_file, std::string& why) {
        beast::error_code ec;
        if (!ca_file.empty()) {
            ctx.load_verify_file(ca_file, ec);
            if (ec) {
                why = "cannot read the CA file " + ca_file + " (" + ec.message() + ")";
                return false;
            }
        } else {
            ctx.set_default_verify_paths(ec);
        }
        // On the stream: its SSL object copied the context's settings when it was made (the CA store is shared).
        stream.set_verify_mode(asio::ssl::verify_peer, ec);
        stream.set_verify_callback(asio::ssl::host_name_verification(host), ec);
        boost::system::error_code not_ip;
        asio::ip::make_address(host, not_ip);
        if (not_ip && !SSL_set_tlsext_host_name(stream.native_handle(), host.c_str())) {
            why = "cannot set the TLS server name " + host;
            return false;
        }
        return true;
    }

    template <class Handler>
    void async_tls_handshake(TlsStream& stream, Handler&& handler) {
        stream.async_handshake(asio::ssl::stream_base::client, std::forward<Handler>(handler));
    }

    static std::string tls_reason(const beast::error_code& ec) {
        std::string reason = ec.message();
        if (ec.category() == asio::error::get_ssl_category()) {
            const char* r = ERR_reason_error_string(static_cast<unsigned long>(ec.value()));
            if (r != nullptr) reason = r;
        }
        return reason;
    }
};

std::unique_ptr<Transport> make_tls_transport(asio::io_context& ioc, TransportHost& host, const Url& url,
                                              const Options& options) {
    return std::make_unique<BeastTransport<TlsStream>>(ioc, host, url, options);
}

}  // namespace crab_rt::detail

#else

namespace crab_rt::detail {

std::unique_ptr<Transport> make_tls_transport(boost::asio::io_context&, TransportHost&, const Url&,
                                              const Options&) {
    return nullptr;
}

}  // namespace crab_rt::detail

#endif
