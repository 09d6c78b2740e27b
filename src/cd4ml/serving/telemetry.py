"""Prometheus metrics of one gateway (its own registry, so tests can run many gateways)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

KNOWN_PATHS = {"/predict", "/health", "/ready", "/version", "/metrics", "/", "/admin/reload", "/api/catalog"}


class Telemetry:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("cd4ml_requests", "HTTP requests", ["path", "status"], registry=self.registry)
        self.latency = Histogram(
            "cd4ml_request_seconds", "request latency", ["path"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.errors = Counter("cd4ml_errors", "responses with status >= 400", ["path", "status"], registry=self.registry)
        self.predictions = Counter("cd4ml_predictions", "rows predicted", ["model_version"], registry=self.registry)
        self.model_info = Gauge("cd4ml_model_info", "live model (value 1)", ["name", "version"], registry=self.registry)
        self.swaps = Gauge("cd4ml_model_swaps", "model versions loaded since start", registry=self.registry)
        self.load_failures = Gauge("cd4ml_model_load_failures", "failed model loads since start", registry=self.registry)
        self.log_depth = Gauge("cd4ml_log_queue_depth", "prediction records waiting", registry=self.registry)
        self.log_dropped = Counter("cd4ml_log_dropped", "prediction records dropped", registry=self.registry)

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS else "other"
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)
        if status >= 400:
            self.errors.labels(path, str(status)).inc()

    def render(self, handle, log_depth: int) -> bytes:
        """Current state of the handle and the log queue, then every metric."""
        self.model_info.clear()
        if handle.current:
            self.model_info.labels(handle.current.name, handle.current.version).set(1)
        self.swaps.set(handle.reloads)
        self.load_failures.set(handle.failures)
        self.log_depth.set(log_depth)
        return generate_latest(self.registry)
