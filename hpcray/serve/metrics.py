"""Prometheus metrics of the HTTP ingress: requests, latency, queue length, replicas."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class _Live:
    """Gauges read from the controller at scrape time."""

    def __init__(self, status: Callable[[], dict]):
        self.status = status

    def collect(self):
        queued = GaugeMetricFamily("hpcray_serve_queued_requests",
                                   "Requests waiting for a replica, per deployment",
                                   labels=["application", "deployment"])
        ongoing = GaugeMetricFamily("hpcray_serve_ongoing_requests",
                                    "Requests sent to replicas and not answered yet",
                                    labels=["application", "deployment"])
        replicas = GaugeMetricFamily("hpcray_serve_replicas", "Replicas by state",
                                     labels=["application", "deployment", "state"])
        for app, info in self.status().items():
            for dep, d in info["deployments"].items():
                queued.add_metric([app, dep], d["queued"])
                ongoing.add_metric([app, dep], d["ongoing"])
                for state, n in d["replica_states"].items():
                    replicas.add_metric([app, dep, state], n)
        yield from (queued, ongoing, replicas)


class Metrics:
    """One registry per ingress (not the process-global one)."""

    def __init__(self, status: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("hpcray_serve_requests", "HTTP requests answered",
                                ["application", "deployment", "code"], registry=self.registry)
        self.latency = Histogram("hpcray_serve_request_latency_seconds",
                                 "Time from request to the start of the response",
                                 ["application", "deployment"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(_Live(status))
        self._children: dict = {}

    def observe(self, app: str, deployment: str, code: int, seconds: float) -> None:
        key = (app, deployment, code)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self.requests.labels(app, deployment, str(code)),
                                          self.latency.labels(app, deployment))
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
