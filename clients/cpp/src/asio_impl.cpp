// Boost.Asio and Boost.Beast compiled once, here (BOOST_ASIO_SEPARATE_COMPILATION and
// BOOST_BEAST_SEPARATE_COMPILATION are set for the library's sources): the other translation units compile
// faster, and in parallel.
#include <boost/asio/impl/src.hpp>
#ifdef CRAB_RT_CLIENT_HAVE_TLS
#include <boost/asio/ssl/impl/src.hpp>
#endif
#include <boost/beast/src.hpp>
