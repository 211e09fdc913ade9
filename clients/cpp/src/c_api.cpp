// The C interface (crab_rt/client.h) over crab_rt::Client. No exception crosses it.
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "crab_rt/client.h"
#include "crab_rt/client.hpp"

struct crab_rt_client {
    crab_rt_callbacks callbacks{};
    std::unique_ptr<crab_rt::Client> client;
    std::string error_message;  // crab_rt_client_error_message's storage
};

namespace {

crab_rt::Callbacks wrap(crab_rt_client* handle) {
    crab_rt::Callbacks cb;
    const crab_rt_callbacks& c = handle->callbacks;
    if (c.on_ready) {
        cb.on_ready = [handle](const crab_rt::Ready& r) {
            std::vector<const char*> labels;
            for (const auto& l : r.labels) labels.push_back(l.c_str());
            crab_rt_ready out{r.stream_id.c_str(), r.server.c_str(), labels.data(), labels.size(),
                              r.max_message_bytes};
            handle->callbacks.on_ready(handle->callbacks.user_data, &out);
        };
    }
    if (c.on_speech) {
        cb.on_speech_start = [handle](const crab_rt::SpeechStart& s) {
            const std::string json = s.to_json();
            crab_rt_speech out{s.stream_id.c_str(), 1, s.time_s, -1, json.c_str()};
            handle->callbacks.on_speech(handle->callbacks.user_data, &out);
        };
        cb.on_speech_end = [handle](const crab_rt::SpeechEnd& s) {
            const std::string json = s.to_json();
            crab_rt_speech out{s.stream_id.c_str(), 0, s.time_s, s.utterance_id ? *s.utterance_id : -1, json.c_str()};
            handle->callbacks.on_speech(handle->callbacks.user_data, &out);
        };
    }
    if (c.on_event) {
        cb.on_event = [handle](const crab_rt::Event& e) {
            std::vector<const char*> labels, stages;
            std::vector<double> probabilities, latencies;
            for (const auto& [k, v] : e.probabilities) {
                labels.push_back(k.c_str());
                probabilities.push_back(v);
            }
            for (const auto& [k, v] : e.latency_ms) {
                stages.push_back(k.c_str());
                latencies.push_back(v);
            }
            const std::string json = e.to_json();
            crab_rt_event out{};
            out.stream_id = e.stream_id.c_str();
            out.utterance_id = e.utterance_id;
            out.start_s = e.start_s;
            out.end_s = e.end_s;
            out.text = e.text.c_str();
            out.text_flagged = e.text_flagged ? 1 : 0;
            out.label = e.label.c_str();
            out.confidence = e.confidence;
            out.num_probabilities = labels.size();
            out.probability_labels = labels.data();
            out.probabilities = probabilities.data();
            out.num_latencies = stages.size();
            out.latency_stages = stages.data();
            out.latency_ms = latencies.data();
            out.forced_split = e.forced_split ? 1 : 0;
            out.json = json.c_str();
            out.stage = e.stage.c_str();
            out.abstained = e.abstained ? 1 : 0;
            handle->callbacks.on_event(handle->callbacks.user_data, &out);
        };
    }
    if (c.on_error) {
        cb.on_error = [handle](const crab_rt::Error& e) {
            crab_rt_error out{e.code.c_str(), e.message.c_str(), e.fatal ? 1 : 0, e.http_status, e.close_code};
            handle->callbacks.on_error(handle->callbacks.user_data, &out);
        };
    }
    if (c.on_done) {
        cb.on_done = [handle](const crab_rt::Done& d) {
            crab_rt_done out{d.stream_id.c_str(), d.reason.c_str(), d.audio_s, d.utterances, d.events,
                             d.dropped_utterances, d.dropped_messages};
            handle->callbacks.on_done(handle->callbacks.user_data, &out);
        };
    }
    if (c.on_closed) {
        cb.on_closed = [handle] { handle->callbacks.on_closed(handle->callbacks.user_data); };
    }
    return cb;
}

int send_status(crab_rt::SendStatus s) {
    switch (s) {
        case crab_rt::SendStatus::queued: return CRAB_RT_SEND_QUEUED;
        case crab_rt::SendStatus::dropped: return CRAB_RT_SEND_DROPPED;
        case crab_rt::SendStatus::not_accepting: return CRAB_RT_SEND_NOT_ACCEPTING;
        case crab_rt::SendStatus::bad_audio: return CRAB_RT_SEND_BAD_AUDIO;
    }
    return CRAB_RT_SEND_BAD_AUDIO;
}

}  // namespace

extern "C" {

const char* crab_rt_version(void) { return crab_rt::version(); }

void crab_rt_options_init(crab_rt_options* options) {
    if (options == nullptr) return;
    *options = crab_rt_options{};
    options->url = "ws://127.0.0.1:8765/";
    options->sample_rate = 16000;
    options->format = CRAB_RT_F32LE;
    options->channels = 1;
    options->realtime = 1;
    options->open_timeout_s = 10.0;
    options->max_queued_audio_s = 5.0;
}

crab_rt_client* crab_rt_client_new(const crab_rt_options* options, const crab_rt_callbacks* callbacks) {
    if (options == nullptr) return nullptr;
    try {
        auto handle = std::make_unique<crab_rt_client>();
        if (callbacks != nullptr) handle->callbacks = *callbacks;
        crab_rt::Options o;
        o.url = options->url != nullptr ? options->url : "";
        o.sample_rate = options->sample_rate;
        o.format = options->format == CRAB_RT_S16LE   ? crab_rt::SampleFormat::s16le
                   : options->format == CRAB_RT_F32LE ? crab_rt::SampleFormat::f32le
                                                      : static_cast<crab_rt::SampleFormat>(options->format);
        o.channels = options->channels;
        if (options->language != nullptr) o.language = options->language;
        if (options->stream_id != nullptr) o.stream_id = options->stream_id;
        o.realtime = options->realtime != 0;
        if (options->token != nullptr) o.token = options->token;
        if (options->ca_file != nullptr) o.ca_file = options->ca_file;
        o.open_timeout_s = options->open_timeout_s;
        o.max_queued_audio_s = options->max_queued_audio_s;
        o.block_when_full = options->block_when_full != 0;
        o.provisional = options->provisional != 0;
        handle->client = std::make_unique<crab_rt::Client>(std::move(o), wrap(handle.get()));
        return handle.release();
    } catch (...) {
        return nullptr;
    }
}

int crab_rt_client_start(crab_rt_client* client) {
    if (client == nullptr) return -1;
    try {
        return client->client->start() ? 0 : -1;
    } catch (...) {
        return -1;
    }
}

int crab_rt_client_send_s16(crab_rt_client* client, const int16_t* samples, size_t count) {
    if (client == nullptr) return CRAB_RT_SEND_NOT_ACCEPTING;
    try {
        return send_status(client->client->send_audio(samples, count));
    } catch (...) {
        return CRAB_RT_SEND_DROPPED;
    }
}

int crab_rt_client_send_f32(crab_rt_client* client, const float* samples, size_t count) {
    if (client == nullptr) return CRAB_RT_SEND_NOT_ACCEPTING;
    try {
        return send_status(client->client->send_audio(samples, count));
    } catch (...) {
        return CRAB_RT_SEND_DROPPED;
    }
}

int crab_rt_client_send_pcm(crab_rt_client* client, const void* data, size_t bytes) {
    if (client == nullptr) return CRAB_RT_SEND_NOT_ACCEPTING;
    try {
        return send_status(client->client->send_pcm(data, bytes));
    } catch (...) {
        return CRAB_RT_SEND_DROPPED;
    }
}

int crab_rt_client_finish(crab_rt_client* client) {
    if (client == nullptr) return -1;
    try {
        return client->client->finish() ? 0 : -1;
    } catch (...) {
        return -1;
    }
}

int crab_rt_client_wait(crab_rt_client* client, double timeout_s) {
    if (client == nullptr) return 1;
    try {
        return client->client->wait(timeout_s) ? 1 : 0;
    } catch (...) {
        return 0;
    }
}

int crab_rt_client_ok(const crab_rt_client* client) {
    if (client == nullptr) return 0;
    try {
        return client->client->result().ok ? 1 : 0;
    } catch (...) {
        return 0;
    }
}

const char* crab_rt_client_error_message(const crab_rt_client* client) {
    if (client == nullptr) return nullptr;
    try {
        const auto result = client->client->result();
        if (!result.error) return nullptr;
        auto* self = const_cast<crab_rt_client*>(client);
        self->error_message = result.error->message;
        return self->error_message.c_str();
    } catch (...) {
        return nullptr;
    }
}

void crab_rt_client_close(crab_rt_client* client) {
    if (client == nullptr) return;
    try {
        client->client->close();
    } catch (...) {
    }
}

void crab_rt_client_free(crab_rt_client* client) {
    if (client == nullptr) return;
    try {
        delete client;
    } catch (...) {
    }
}

}  // extern "C"
