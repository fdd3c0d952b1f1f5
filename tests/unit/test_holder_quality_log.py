"""Live quality gauges follow the version's verdict at each registry poll: a verdict gone clears them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from prometheus_client import generate_latest

from api.holder import ModelHolder
from api.metrics import ServiceMetrics

FIGURES = {"labelled": 397, "metrics": {"f1": {"live": 0.41, "interval": [0.35, 0.47], "gate": 0.62}}}


class Source:
    """A registry stand-in serving version 7, whose quality verdict is whatever the test sets (None: none verifies)."""

    def __init__(self) -> None:
        self.verdict: SimpleNamespace | None = SimpleNamespace(verdict="failed", figures=FIGURES)

    def target_version(self) -> str:
        return "7"

    def quality(self, version: str) -> SimpleNamespace | None:
        return self.verdict


def quality_lines(metrics: ServiceMetrics) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    names = ("model_quality_failed{", "model_live_f1{", "model_gate_f1{", "model_live_labelled{")
    return [line for line in text.splitlines() if line.startswith(names)]


def test_a_verdict_that_disappears_clears_its_versions_quality_gauges():
    # given: a replica serving version 7, whose verified verdict says failed
    source, metrics = Source(), ServiceMetrics()
    holder = ModelHolder(source=source, model=SimpleNamespace(version="7"))  # type: ignore[arg-type]
    holder.watch(metrics)
    asyncio.run(holder.refresh())
    assert 'model_quality_failed{version="7"} 1.0' in quality_lines(metrics) and len(quality_lines(metrics)) == 6
    # when: the verdict is removed (or stops verifying) and the next poll runs
    source.verdict = None
    asyncio.run(holder.refresh())
    # then: none of version 7's quality series is left, as on a replica started since
    assert quality_lines(metrics) == []
    # when: a verdict verifies again, then: it is exported again
    source.verdict = SimpleNamespace(verdict="passed", figures=FIGURES)
    asyncio.run(holder.refresh())
    assert 'model_quality_failed{version="7"} 0.0' in quality_lines(metrics)
