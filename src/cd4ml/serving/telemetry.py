"""Prometheus metrics of one gateway (its own registry, so tests can run many gateways)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

KNOWN_PATHS = {
    "/predict",
    "/feedback",
    "/health",
    "/ready",
    "/version",
    "/metrics",
    "/",
    "/admin/reload",
    "/admin/origin",
    "/admin/routing",
    "/api/catalog",
}


class Telemetry:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("cd4ml_requests", "HTTP requests", ["path", "status"], registry=self.registry)
        self.latency = Histogram(
            "cd4ml_request_seconds",
            "request latency",
            ["path"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.errors = Counter(
            "cd4ml_errors", "responses with status >= 400", ["path", "status"], registry=self.registry
        )
        self.predictions = Counter(
            "cd4ml_predictions", "rows predicted", ["arm", "model_version"], registry=self.registry
        )
        self.model_info = Gauge(
            "cd4ml_model_info", "live model per arm (value 1)", ["arm", "name", "version"], registry=self.registry
        )
        self.feedback = Counter("cd4ml_feedback", "feedback received", ["arm"], registry=self.registry)
        self.shadow_failures = Counter(
            "cd4ml_shadow_failures", "shadow predictions that failed", registry=self.registry
        )
        self.routing_errors = Counter(
            "cd4ml_routing_errors", "routing changes that could not be applied", registry=self.registry
        )
        self.shadow_skipped = Counter(
            "cd4ml_shadow_skipped", "shadow calls skipped: queue full", registry=self.registry
        )
        self.swaps = Gauge("cd4ml_model_swaps", "model versions loaded since start", registry=self.registry)
        self.load_failures = Gauge(
            "cd4ml_model_load_failures", "failed model loads since start", registry=self.registry
        )
        self.log_depth = Gauge("cd4ml_log_queue_depth", "prediction records waiting", registry=self.registry)
        self.log_dropped = Counter("cd4ml_log_dropped", "prediction records dropped", registry=self.registry)
        self.bandit_fallbacks = Gauge(
            "cd4ml_bandit_fallbacks",
            "requests served by the champion because the bandit store failed, since start",
            registry=self.registry,
        )

        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once: `labels()` takes a lock and builds a key."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS else "other"
        self._child(self.requests, path, str(status)).inc()
        self._child(self.latency, path).observe(seconds)
        if status >= 400:
            self._child(self.errors, path, str(status)).inc()

    def predicted(self, arm: str, version: str, rows: int) -> None:
        self._child(self.predictions, arm, version).inc(rows)

    def render(self, arms, log_depth: int) -> bytes:
        """Current state of the arms and the log queue, then every metric."""
        self.model_info.clear()
        for live in arms.live():
            self.model_info.labels(live["arm"], live["name"], live["version"]).set(1)
        self.swaps.set(sum(h.reloads for h in arms.handles.values()))
        self.load_failures.set(sum(h.failures for h in arms.handles.values()))
        self.bandit_fallbacks.set(arms.bandit_fallbacks)
        self.log_depth.set(log_depth)
        return generate_latest(self.registry)
