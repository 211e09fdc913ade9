/* The C interface (crab_rt/client.h), compiled as C. Without arguments: the defaults, NULL handles, an invalid
 * URL and a refused connection, each reaching on_error then on_closed. With a URL and a raw f32le 16 kHz mono
 * file (live_driver.py): streams it and checks the events.
 *
 *   crab_rt_c_api_test [URL FILE.f32 [TOKEN]]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crab_rt/client.h"

static int failures = 0;
#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            ++failures;                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                         \
    } while (0)

typedef struct {
    int errors;
    int closed;
    int events;
    int speech;
    int done_events;
    char code[64];
    char message[512];
    char first_json[2048];
} record;

static void on_error(void* user, const crab_rt_error* e) {
    record* r = (record*)user;
    if (!e->fatal) return;
    ++r->errors;
    snprintf(r->code, sizeof r->code, "%s", e->code);
    snprintf(r->message, sizeof r->message, "%s", e->message);
}

static void on_closed(void* user) { ((record*)user)->closed++; }

static void on_event(void* user, const crab_rt_event* e) {
    record* r = (record*)user;
    if (r->events == 0) snprintf(r->first_json, sizeof r->first_json, "%s", e->json);
    ++r->events;
    CHECK(e->num_probabilities >= 2 && e->probability_labels[0] != NULL && e->label != NULL);
    CHECK(e->confidence >= 0.0 && e->confidence <= 1.0 && e->end_s >= e->start_s);
    CHECK(e->num_latencies == 6 && strcmp(e->latency_stages[0], "end_to_event") == 0);
}

static void on_speech(void* user, const crab_rt_speech* s) {
    ((record*)user)->speech++;
    CHECK(s->json != NULL && strstr(s->json, s->is_start ? "\"speech_start\"" : "\"speech_end\"") != NULL);
}

static void on_done(void* user, const crab_rt_done* d) { ((record*)user)->done_events = (int)d->events; }

static crab_rt_callbacks callbacks_for(record* r) {
    crab_rt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.user_data = r;
    cb.on_error = on_error;
    cb.on_closed = on_closed;
    cb.on_event = on_event;
    cb.on_speech = on_speech;
    cb.on_done = on_done;
    return cb;
}

static int free_port(void) {
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr*)&addr, sizeof addr);
    getsockname(fd, (struct sockaddr*)&addr, &len);
    close(fd);
    return ntohs(addr.sin_port);
}

static void offline(void) {
    crab_rt_options o;
    record r;
    crab_rt_callbacks cb;
    crab_rt_client* c;
    char url[64];
    short pcm[2] = {0, 0};

    crab_rt_options_init(&o);
    CHECK(strcmp(o.url, "ws://127.0.0.1:8765/") == 0 && o.sample_rate == 16000 && o.format == CRAB_RT_F32LE);
    CHECK(o.channels == 1 && o.realtime == 1 && o.open_timeout_s == 10.0);
    CHECK(crab_rt_version() != NULL && strlen(crab_rt_version()) >= 5);
    CHECK(crab_rt_client_new(NULL, NULL) == NULL);
    CHECK(crab_rt_client_start(NULL) == -1);
    CHECK(crab_rt_client_send_s16(NULL, pcm, 2) == CRAB_RT_SEND_NOT_ACCEPTING);
    CHECK(crab_rt_client_wait(NULL, 1.0) == 1);
    crab_rt_client_close(NULL);
    crab_rt_client_free(NULL);

    /* an invalid URL */
    memset(&r, 0, sizeof r);
    cb = callbacks_for(&r);
    o.url = "127.0.0.1:8765";
    c = crab_rt_client_new(&o, &cb);
    CHECK(c != NULL);
    CHECK(crab_rt_client_send_s16(c, pcm, 2) == CRAB_RT_SEND_NOT_ACCEPTING);
    CHECK(crab_rt_client_start(c) == -1);
    CHECK(crab_rt_client_wait(c, 5.0) == 1);
    CHECK(r.errors == 1 && r.closed == 1 && strcmp(r.code, "invalid_url") == 0);
    CHECK(strstr(r.message, "invalid server URL '127.0.0.1:8765'") != NULL);
    CHECK(crab_rt_client_ok(c) == 0);
    CHECK(crab_rt_client_error_message(c) != NULL && strcmp(crab_rt_client_error_message(c), r.message) == 0);
    crab_rt_client_free(c);

    /* nothing listening */
    memset(&r, 0, sizeof r);
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", free_port());
    o.url = url;
    c = crab_rt_client_new(&o, &cb);
    CHECK(crab_rt_client_start(c) == 0);
    CHECK(crab_rt_client_wait(c, 10.0) == 1);
    CHECK(r.errors == 1 && r.closed == 1 && strcmp(r.code, "connect") == 0);
    CHECK(strstr(r.message, "connection refused") != NULL);
    crab_rt_client_free(c);

    /* an invalid format */
    memset(&r, 0, sizeof r);
    o.format = 9;
    c = crab_rt_client_new(&o, &cb);
    CHECK(crab_rt_client_start(c) == -1 && strcmp(r.code, "invalid_option") == 0);
    crab_rt_client_free(c);
}

static void live(const char* url, const char* path, const char* token) {
    crab_rt_options o;
    record r;
    crab_rt_callbacks cb;
    crab_rt_client* c;
    FILE* f = fopen(path, "rb");
    float chunk[1600];
    size_t n;

    CHECK(f != NULL);
    if (f == NULL) return;
    memset(&r, 0, sizeof r);
    cb = callbacks_for(&r);
    crab_rt_options_init(&o);
    o.url = url;
    o.format = CRAB_RT_F32LE;
    o.realtime = 0;
    o.block_when_full = 1;
    o.stream_id = "c-api";
    o.token = token;
    c = crab_rt_client_new(&o, &cb);
    CHECK(crab_rt_client_start(c) == 0);
    while ((n = fread(chunk, sizeof(float), 1600, f)) > 0) CHECK(crab_rt_client_send_f32(c, chunk, n) == CRAB_RT_SEND_QUEUED);
    fclose(f);
    CHECK(crab_rt_client_finish(c) == 0);
    CHECK(crab_rt_client_wait(c, 120.0) == 1);
    CHECK(crab_rt_client_ok(c) == 1);
    CHECK(r.errors == 0 && r.closed == 1);
    CHECK(r.events >= 1 && r.done_events == r.events && r.speech >= 2 * r.events);
    CHECK(strncmp(r.first_json, "{\"stream_id\": \"c-api\", \"utterance_id\": 0, ", 42) == 0);
    if (r.errors) fprintf(stderr, "error: %s\n", r.message);
    printf("c api: %d events, %d speech messages; first: %s\n", r.events, r.speech, r.first_json);
    crab_rt_client_free(c);
}

int main(int argc, char** argv) {
    if (argc >= 3) {
        live(argv[1], argv[2], argc >= 4 ? argv[3] : NULL);
    } else {
        offline();
    }
    printf("crab_rt_c_api_test: %d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
