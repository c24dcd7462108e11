"""Run many seeds and report them: what ``p2prec sim`` prints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from p2prec.sim.scenario import SimConfig, SimResult, run


def config_for(nodes: int, dcs: int = 3, stream_s: float | None = None) -> SimConfig:
    """The default scenario scaled to ``nodes`` nodes in ``dcs`` datacenters (about one in six
    nodes crashes and restarts), with the stream shortened to ``stream_s`` when given."""
    base = SimConfig()
    crashes = max(1, nodes // 6)
    config = replace(base, nodes=nodes, dcs=dcs, faults=replace(base.faults, crashes=crashes))
    if stream_s is not None:
        config = replace(config, stream_s=stream_s)
    return config


def run_seeds(seeds: Iterable[int], config: SimConfig) -> Iterator[SimResult]:
    for seed in seeds:
        yield run(seed, config)


def format_result(result: SimResult) -> str:
    status = "ok" if result.ok else "FAIL"
    line = (
        f"seed {result.seed:>6}  {status:4}  converged in {result.converge_s:6.2f} s  "
        f"steps {result.steps:4}  rollbacks {result.rollbacks}  restarts {result.restarts}  "
        f"wan deltas {result.wan_deltas:5}  lan deltas {result.lan_deltas:6}  "
        f"violations {len(result.violations)}"
    )
    details = [
        f"    {v.invariant} at {v.at:.2f}s on {v.node}: {v.detail}" for v in result.violations[:10]
    ]
    return "\n".join([line, *details])
