"""Prometheus metrics of one swarmwatch process, and a sink wrapper that counts.

Labels are sources and vantages only: never an address, never a tracker's peers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from swarmwatch.sightings import PeerSighting, SampleRecord, SightingSink

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    """The counters /metrics publishes; one instance per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sightings = Counter(
            "swarmwatch_sightings", "Peer sightings handed to the pipeline", ["source"], registry=r
        )
        self.samples = Counter(
            "swarmwatch_samples", "Announces, lookups and swarm polls", ["source"], registry=r
        )
        self.sample_errors = Counter(
            "swarmwatch_sample_errors",
            "Failed announces/lookups (tracker and DHT errors)",
            ["source"],
            registry=r,
        )
        self.sample_latency = Histogram(
            "swarmwatch_sample_seconds",
            "Time from sending an announce or lookup to its answer",
            ["source"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.queue_depth = Gauge(
            "swarmwatch_pipeline_queue_depth", "Sightings waiting in memory", registry=r
        )
        self.anomalies = Gauge(
            "swarmwatch_geolocation_anomalies",
            "Sightings that could not be placed (no city, private, bogon...)",
            registry=r,
        )
        self.crawlers_alive = Gauge(
            "swarmwatch_crawlers_alive", "Crawler tasks running in this process", registry=r
        )
        self.own_excluded = Gauge(
            "swarmwatch_own_endpoint_sightings",
            "Sightings dropped because they were of this or a sibling worker's own endpoint",
            registry=r,
        )
        self.swarm_sighted = Gauge(
            "swarmwatch_swarm_round_peers_sighted",
            "Peers the swarm session sighted in its last round (all swarms)",
            registry=r,
        )
        self.swarm_known = Gauge(
            "swarmwatch_swarm_round_peers_reachable",
            "Peers known and reachable (connected in a recent round), all swarms",
            registry=r,
        )
        self.swarm_coverage = Gauge(
            "swarmwatch_swarm_round_coverage",
            "Last swarm round: peers sighted over peers known and reachable (1 when none known)",
            registry=r,
        )

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def watch_anomalies(self, count: Callable[[], float]) -> None:
        self.anomalies.set_function(count)

    def watch_own_excluded(self, count: Callable[[], float]) -> None:
        self.own_excluded.set_function(count)

    def watch_coverage(self, report: Callable[[], tuple[int, int]]) -> None:
        self.swarm_sighted.set_function(lambda: float(report()[0]))
        self.swarm_known.set_function(lambda: float(report()[1]))

        def ratio() -> float:
            sighted, known = report()
            return sighted / known if known else 1.0

        self.swarm_coverage.set_function(ratio)

    def watch_pipeline(self, stats: Callable[[], dict[str, int]]) -> None:
        """Every pipeline counter (received, stored, coalesced, dropped...) at scrape time."""
        self.registry.register(_PipelineCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PipelineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "swarmwatch_pipeline_events",
            "Pipeline counters: received, coalesced, stored, new_peers, anomalies, lost, ...",
            labels=["event"],
        )
        for name, value in self.stats().items():
            family.add_metric([name], float(value))
        yield family


class CountingSink:
    """A SightingSink that counts what passes through it, then hands it on."""

    def __init__(self, inner: SightingSink, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def put(self, sighting: PeerSighting) -> None:
        self.metrics.sightings.labels(str(sighting.source)).inc()
        await self.inner.put(sighting)

    async def put_sample(self, sample: SampleRecord) -> None:
        source = str(sample.source)
        self.metrics.samples.labels(source).inc()
        if sample.error:
            self.metrics.sample_errors.labels(source).inc()
        elif sample.finished_at is not None:
            seconds = (sample.finished_at - sample.started_at).total_seconds()
            self.metrics.sample_latency.labels(source).observe(max(0.0, seconds))
        await self.inner.put_sample(sample)
