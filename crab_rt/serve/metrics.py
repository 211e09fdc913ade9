"""The server's Prometheus metrics, in a registry of their own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from crab_rt.runtime.events import LATENCY_KEYS

__all__ = ["ServerMetrics", "LATENCY_BUCKETS_S"]

# Seconds: fine below 100 ms (GPU), coarse up to the 10 s a stalled CPU can reach.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
REFUSAL_REASONS = ("full", "draining", "loading", "unauthorized", "connections")


class ServerMetrics:
    """Counters, gauges and stage-latency histograms of one server.

    Args:
        queue_depths: called at each scrape; returns the pipeline's queue depths
            (`Pipeline.queue_depths()`), or {} while the models load.
    """

    def __init__(self, queue_depths: Callable[[], dict[str, int]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, CPU seconds (Linux)
        self.streams_active = Gauge("crab_rt_streams_active", "Open streams", registry=r)
        self.streams_total = Counter("crab_rt_streams", "Streams accepted", registry=r)
        self.refused = Counter("crab_rt_connections_refused", "Connections refused before the handshake",
                               ["reason"], registry=r)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        self.errors = Counter("crab_rt_stream_errors", "Error messages sent to clients, by code", ["code"],
                              registry=r)
        self.audio_seconds = Counter("crab_rt_audio_seconds", "Audio received, in 16 kHz seconds", registry=r)
        self.utterances = Counter("crab_rt_utterances", "Utterances submitted to the pipeline", registry=r)
        self.events = Counter("crab_rt_events", "Events sent to clients (final, one per utterance)", registry=r)
        self.provisional_events = Counter("crab_rt_provisional_events",
                                          "Provisional events (the voice alone) sent to clients", registry=r)
        self.utterances_dropped = Counter("crab_rt_utterances_dropped", "Utterances dropped by --overflow drop",
                                          registry=r)
        self.messages_dropped = Counter("crab_rt_messages_dropped", "Messages lost to clients that read too slowly",
                                        registry=r)
        self.latency = Histogram("crab_rt_stage_latency_seconds", "Per-event stage latency", ["stage"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        for stage in LATENCY_KEYS:
            self.latency.labels(stage)
        self.provisional_latency = Histogram("crab_rt_provisional_latency_seconds",
                                             "End of speech to a provisional event", buckets=LATENCY_BUCKETS_S,
                                             registry=r)
        depth = Gauge("crab_rt_queue_depth", "Utterances waiting per worker queue; in_flight: in all", ["queue"],
                      registry=r)
        for name in ("speech", "asr", "fusion", "in_flight"):
            depth.labels(name).set_function(lambda name=name: float(queue_depths().get(name, 0)))

    def observe_latency(self, latency_ms: dict[str, float]) -> None:
        for stage, ms in latency_ms.items():
            if stage in LATENCY_KEYS:
                self.latency.labels(stage).observe(ms / 1000.0)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
