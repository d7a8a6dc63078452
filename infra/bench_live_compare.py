"""Does a slow SSE client slow the pipeline? Saturated worker throughput with 0 and N of them.

Each measurement is one `tapstream bench pipeline` run (infra.bench's loading and worker
timing, reused as they are) in an isolated run that also has its own live topic and a
`tapstream monitor` reading it: E events are pre-loaded into the raw topic, the N slow readers
(infra.bench_live_sse) are connected to the monitor, then the worker carries the events into
both sinks and the live feed; worker events/s is its own span from first event to last flush.
Runs alternate 0, N, 0, N... so the shared machine's drift touches both sides alike.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from infra.bench import load_events, run_worker  # the pipeline bench's own steps, reused as they are
from infra.bench_events import worker_rate
from infra.bench_live_plan import LiveOptions, slow_summary, throughput_ratio
from infra.bench_live_run import Readers, monitor_sse, plan_live_run, start_monitor
from infra.bench_run import BenchOptions, Say, cleanup, prepare
from infra.harness import TapstreamProcess
from tapstream.settings import Settings

logger = logging.getLogger(__name__)


def compare_throughput(settings: Settings, options: LiveOptions, say: Say) -> dict[str, Any]:
    """Worker events/s with 0 and ``options.slow_clients`` slow readers, compare_pairs times each."""
    rates: dict[int, list[float | None]] = {0: [], options.slow_clients: []}
    cut: list[dict[str, Any]] = []
    for _ in range(options.compare_pairs):
        for slow in (0, options.slow_clients):
            rate, slow_counts = _one(settings, options, slow, say)
            rates[slow].append(rate)
            if slow:
                cut.append(slow_counts)
    without = _median(rates[0])
    with_slow = _median(rates[options.slow_clients])
    ratio = throughput_ratio(without, with_slow)
    say(f"  throughput: {without} events/s without, {with_slow} with {options.slow_clients} slow clients: "
        f"ratio {ratio}")
    return {"events": options.compare_events, "slow_clients": options.slow_clients,
            "without_events_per_s": rates[0], "with_events_per_s": rates[options.slow_clients],
            "median_without": without, "median_with": with_slow, "ratio": ratio,
            "slow_readers": cut}


def _one(settings: Settings, options: LiveOptions, slow: int, say: Say) -> tuple[float | None, dict[str, Any]]:
    """One saturated run with ``slow`` slow readers; (worker events/s, what befell the readers)."""
    run = plan_live_run(settings, options)
    bench = BenchOptions(events=options.compare_events, employees=options.employees, batch_max=options.batch_max,
                         mix=False)
    procs: list[TapstreamProcess] = []
    readers: Readers | None = None
    say(f"  throughput run {run.run_id}: {options.compare_events} events, {slow} slow clients")
    try:
        prepare(run, say)
        start_monitor(run, procs)
        if slow:
            readers = Readers(run, clients=0, slow=slow, procs=1, planned=0)
            readers.wait_ready()
        load_events(run, bench, say)
        outcome = run_worker(run, bench, say)
        counts: dict[str, Any] = slow_summary(readers.results(stop=True)) if readers else {}
        counts["monitor_sse"] = monitor_sse(run)
    finally:
        if readers is not None:
            readers.close()
        for proc in reversed(procs):
            proc.stop()
        if not options.keep:
            cleanup(run, say)
    rate = worker_rate(outcome.stats, options.compare_events)
    say(f"  ... {rate} events/s")
    return (float(rate) if rate is not None else None), counts


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known)) if known else None
