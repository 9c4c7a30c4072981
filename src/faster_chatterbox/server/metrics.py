"""Prometheus metrics of one server (its own registry: two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("faster_chatterbox_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.queue_depth = Gauge("faster_chatterbox_queue_depth", "speech requests admitted and waiting for a "
                                 "worker", registry=r)
        self.in_flight = Gauge("faster_chatterbox_in_flight", "speech requests being synthesised", registry=r)
        self.rejected = Counter("faster_chatterbox_rejected", "speech requests refused because the queue was "
                                "full (429)", registry=r)
        self.cancelled = Counter("faster_chatterbox_cancelled", "speech requests stopped before their end, by "
                                 "reason (disconnect, timeout)", ["reason"], registry=r)
        self.time_to_first_audio = Histogram("faster_chatterbox_time_to_first_audio_seconds",
                                             "from a speech request's arrival to its first encoded audio",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.real_time_factor = Histogram("faster_chatterbox_real_time_factor", "synthesis wall time per "
                                          "second of audio (below 1: faster than real time)",
                                          buckets=_RTF_BUCKETS, registry=r)
        self.audio_seconds = Counter("faster_chatterbox_audio_seconds", "seconds of audio synthesised",
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
