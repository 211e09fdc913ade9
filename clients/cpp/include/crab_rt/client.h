/* crab_rt/client.h: the C interface of the crab_rt_client library (the same library as crab_rt/client.hpp).
 *
 * An opaque handle and plain callbacks, for C programs and for other languages' foreign-function interfaces.
 * Every callback runs on the client's I/O thread and receives `user_data`. The pointers a callback receives
 * (strings, arrays, structs) are valid only during the call: copy what you keep.
 *
 *     crab_rt_options options;
 *     crab_rt_options_init(&options);
 *     options.url = "ws://127.0.0.1:8765/";
 *     options.format = CRAB_RT_S16LE;
 *     crab_rt_callbacks callbacks = {0};
 *     callbacks.on_event = print_event;
 *     callbacks.on_error = print_error;
 *     crab_rt_client* client = crab_rt_client_new(&options, &callbacks);
 *     if (crab_rt_client_start(client) == 0) {
 *         crab_rt_client_send_s16(client, samples, count);
 *         crab_rt_client_finish(client);
 *         crab_rt_client_wait(client, -1.0);
 *     }
 *     crab_rt_client_free(client);
 *
 * No function of this interface lets an exception through; none crashes on a NULL handle.
 */
#ifndef CRAB_RT_CLIENT_H
#define CRAB_RT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "crab_rt/client_export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct crab_rt_client crab_rt_client;

enum crab_rt_format { CRAB_RT_S16LE = 0, CRAB_RT_F32LE = 1 };

enum crab_rt_send_status {
    CRAB_RT_SEND_QUEUED = 0,
    CRAB_RT_SEND_DROPPED = 1,        /* the send queue was full */
    CRAB_RT_SEND_NOT_ACCEPTING = 2,  /* before start, after finish or close, or the stream ended */
    CRAB_RT_SEND_BAD_AUDIO = 3       /* not whole sample frames, or NaN/infinite samples */
};

typedef struct crab_rt_options {
    const char* url;           /* ws://HOST:PORT/ or wss://HOST:PORT/ (default ws://127.0.0.1:8765/) */
    int sample_rate;           /* 16000 */
    int format;                /* enum crab_rt_format (CRAB_RT_F32LE) */
    int channels;              /* 1 */
    const char* language;      /* NULL: the server's */
    const char* stream_id;     /* NULL: the server picks one */
    int realtime;              /* 1 */
    const char* token;         /* NULL: none */
    const char* ca_file;       /* NULL: the system's CAs */
    double open_timeout_s;     /* 10 */
    double max_queued_audio_s; /* 5 */
    int block_when_full;       /* 0 */
    int provisional;           /* 0; 1: protocol 1.1 provisional events too (crab_rt_event.stage) */
} crab_rt_options;

typedef struct crab_rt_ready {
    const char* stream_id;
    const char* server;
    const char* const* labels;
    size_t num_labels;
    int64_t max_message_bytes;
} crab_rt_ready;

typedef struct crab_rt_event {
    const char* stream_id;
    int64_t utterance_id;
    double start_s;
    double end_s;
    const char* text;
    int text_flagged;
    const char* label;
    double confidence;
    size_t num_probabilities;
    const char* const* probability_labels;
    const double* probabilities;
    size_t num_latencies;
    const char* const* latency_stages; /* end_to_event, asr, speech_encoder, text_encoder, head, queue_wait */
    const double* latency_ms;
    int forced_split;
    const char* json; /* the JSON line `crab-rt client` prints for this event (no newline) */
    const char* stage; /* "final", or "provisional" (protocol 1.1: the voice alone, before ASR; no text) */
    int abstained;     /* confidence below the server's --min-confidence (the label stays) */
} crab_rt_event;

typedef struct crab_rt_speech {
    const char* stream_id;
    int is_start;          /* 1: speech_start, 0: speech_end */
    double time_s;
    int64_t utterance_id;  /* speech_end: the utterance, or -1 for none; speech_start: -1 */
    const char* json;      /* the line `crab-rt client --show-speech` prints */
} crab_rt_speech;

typedef struct crab_rt_error {
    const char* code;    /* see crab_rt::Error in client.hpp */
    const char* message; /* one line */
    int fatal;
    int http_status;
    int close_code;
} crab_rt_error;

typedef struct crab_rt_done {
    const char* stream_id;
    const char* reason;
    double audio_s;
    int64_t utterances;
    int64_t events;
    int64_t dropped_utterances;
    int64_t dropped_messages;
} crab_rt_done;

typedef struct crab_rt_callbacks {
    void* user_data;
    void (*on_ready)(void* user_data, const crab_rt_ready* ready);
    void (*on_speech)(void* user_data, const crab_rt_speech* speech);
    void (*on_event)(void* user_data, const crab_rt_event* event);
    void (*on_error)(void* user_data, const crab_rt_error* error);
    void (*on_done)(void* user_data, const crab_rt_done* done);
    void (*on_closed)(void* user_data);
} crab_rt_callbacks;

CRAB_RT_CLIENT_API const char* crab_rt_version(void);

/* The defaults above. */
CRAB_RT_CLIENT_API void crab_rt_options_init(crab_rt_options* options);

/* Copies the options and callbacks. NULL only when out of memory or `options` is NULL; invalid options are
 * reported by crab_rt_client_start. */
CRAB_RT_CLIENT_API crab_rt_client* crab_rt_client_new(const crab_rt_options* options,
                                                     const crab_rt_callbacks* callbacks);
/* 0: connecting in the background; -1: invalid options (on_error and on_closed were called) or started twice. */
CRAB_RT_CLIENT_API int crab_rt_client_start(crab_rt_client* client);
/* enum crab_rt_send_status. `count`: samples, all channels interleaved. Thread-safe. */
CRAB_RT_CLIENT_API int crab_rt_client_send_s16(crab_rt_client* client, const int16_t* samples, size_t count);
CRAB_RT_CLIENT_API int crab_rt_client_send_f32(crab_rt_client* client, const float* samples, size_t count);
CRAB_RT_CLIENT_API int crab_rt_client_send_pcm(crab_rt_client* client, const void* data, size_t bytes);
/* End of audio. 0, or -1 when the stream was not streaming. */
CRAB_RT_CLIENT_API int crab_rt_client_finish(crab_rt_client* client);
/* Wait until the stream is over; timeout_s < 0: no limit. 1: over, 0: timed out (or called from a callback). */
CRAB_RT_CLIENT_API int crab_rt_client_wait(crab_rt_client* client, double timeout_s);
/* 1: the stream ended with done and no fatal error; 0: not (yet). */
CRAB_RT_CLIENT_API int crab_rt_client_ok(const crab_rt_client* client);
/* The fatal error's message, or NULL; valid until crab_rt_client_free. */
CRAB_RT_CLIENT_API const char* crab_rt_client_error_message(const crab_rt_client* client);
/* Abort now (no stop); idempotent. */
CRAB_RT_CLIENT_API void crab_rt_client_close(crab_rt_client* client);
/* Close and free. Not from a callback. */
CRAB_RT_CLIENT_API void crab_rt_client_free(crab_rt_client* client);

#ifdef __cplusplus
}
#endif

#endif /* CRAB_RT_CLIENT_H */
