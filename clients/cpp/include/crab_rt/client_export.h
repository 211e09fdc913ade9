/* crab_rt/client_export.h: the symbol visibility of the crab_rt_client library (C and C++). */
#ifndef CRAB_RT_CLIENT_EXPORT_H
#define CRAB_RT_CLIENT_EXPORT_H

#if defined(_WIN32) && !defined(CRAB_RT_CLIENT_STATIC)
#  if defined(CRAB_RT_CLIENT_BUILDING)
#    define CRAB_RT_CLIENT_API __declspec(dllexport)
#  else
#    define CRAB_RT_CLIENT_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define CRAB_RT_CLIENT_API __attribute__((visibility("default")))
#else
#  define CRAB_RT_CLIENT_API
#endif

#endif /* CRAB_RT_CLIENT_EXPORT_H */
