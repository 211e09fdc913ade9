/* Uses the installed crab_rt_client from C: an invalid URL reaches the error callback. */
#include <stdio.h>
#include <string.h>

#include <crab_rt/client.h>

static char code[64];

static void on_error(void* user, const crab_rt_error* e) {
    (void)user;
    snprintf(code, sizeof code, "%s", e->code);
}

int main(void) {
    crab_rt_options options;
    crab_rt_callbacks callbacks;
    crab_rt_client* client;
    crab_rt_options_init(&options);
    options.url = "not a url";
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.on_error = on_error;
    client = crab_rt_client_new(&options, &callbacks);
    crab_rt_client_start(client);
    crab_rt_client_free(client);
    printf("crab_rt_client %s (C): error callback: %s\n", crab_rt_version(), code);
    return strcmp(code, "invalid_url") == 0 ? 0 : 1;
}
