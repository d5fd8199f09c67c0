"""`--enable-metrics`: every `radixlm_*` metric also under SGLang's name (`sglang:*`, with a
`model_name` label), so dashboards and tools written for SGLang read radixlm unchanged."""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

OURS, THEIRS = "radixlm_", "sglang:"


class SGLangNames:
    """A collector mirroring `source` at scrape time (values are never copied or kept).
    Invariant: one `sglang:<x>` family per `radixlm_<x>` family, same type, samples and labels,
    plus `model_name`. Register it in a registry other than `source` (it reads `source`)."""

    def __init__(self, source: CollectorRegistry, model_name: str) -> None:
        self._source = source
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if not family.name.startswith(OURS):
                continue
            renamed = Metric(THEIRS + family.name[len(OURS) :], family.documentation, family.type, family.unit)
            for sample in family.samples:
                name = THEIRS + sample.name[len(OURS) :]
                renamed.add_sample(name, {**sample.labels, "model_name": self._model_name}, sample.value)
            yield renamed


def sglang_registry(source: CollectorRegistry, model_name: str) -> CollectorRegistry:
    """A registry holding only the mirror of `source`."""
    registry = CollectorRegistry()
    registry.register(SGLangNames(source, model_name))
    return registry
