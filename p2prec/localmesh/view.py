"""Plain-text renderings of the mesh's health: the status table and the one-line progress."""

from __future__ import annotations

import sys
import time
from typing import Any

PROGRESS_PRINT_S = 2.0  # without a terminal: one progress block this often


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text[:width].ljust(width)


def _root(entry: dict[str, Any]) -> str:
    root = entry.get("merkle_root")
    return root[:12] if isinstance(root, str) else "-"


def status_lines(health: dict[str, Any]) -> list[str]:
    """One line per member, then a verdict line."""
    header = (
        f"{'id':<10} {'dc':<4} {'role':<7} {'pid':<8} {'ready':<6} {'epoch':<5} "
        f"{'lag ms':>8} {'versions':<14} {'root':<12} {'url':<24} note"
    )
    lines = [header]
    for n in health["nodes"]:
        lag = "-" if n["lag_ms"] is None else f"{n['lag_ms']:.0f}"
        lines.append(
            f"{_cell(n['id'], 10)} {_cell(n['dc'], 4)} {_cell(n['role'], 7)} "
            f"{_cell(n['pid'], 8)} {_cell('yes' if n['ready'] else 'no', 6)} "
            f"{_cell(n['epoch'], 5)} {lag:>8} {_cell(n['summary'], 14)} "
            f"{_cell(_root(n), 12)} {_cell(n['url'], 24)} {n['reason']}".rstrip()
        )
    lines.append(verdict_line(health))
    return lines


def verdict_line(health: dict[str, Any]) -> str:
    nodes = health["nodes"]
    ready = sum(1 for n in nodes if n["ready"])
    behind = [n["lag_versions"] for n in nodes if n["role"] == "node" and n["lag_versions"]]
    roots = "all roots agree with the trainer" if health["converged"] else "roots differ"
    if behind and not health["converged"]:
        roots += f" (up to {max(behind)} deltas behind the trainer)"
    return f"{ready}/{len(nodes)} ready; {roots}"


def progress_line(health: dict[str, Any], elapsed_s: float) -> str:
    """Start-up progress: who is still not ready, and why."""
    waiting = [f"{n['id']} ({n['reason']})" for n in health["nodes"] if not n["ready"]]
    ready = len(health["nodes"]) - len(waiting)
    tail = "; waiting for " + ", ".join(waiting[:3]) if waiting else ""
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    return f"[{elapsed_s:5.1f} s] {ready}/{len(health['nodes'])} ready{tail}{more}"


def live_lines(health: dict[str, Any]) -> list[str]:
    """The compact live view: one line per datacenter."""
    by_dc: dict[str, list[dict[str, Any]]] = {}
    for n in health["nodes"]:
        by_dc.setdefault(n["dc"], []).append(n)
    lines = []
    for dc, members in sorted(by_dc.items()):
        cells = []
        for n in members:
            lag = "-" if n["lag_ms"] is None else f"{n['lag_ms']:.0f}ms"
            mark = "+" if n["ready"] else "!"
            cells.append(f"{mark}{n['id']} {n['summary'] or '-'} lag {lag}")
        lines.append(f"{dc}: " + " | ".join(cells))
    lines.append(verdict_line(health))
    return lines


class TerminalView:
    """Progress lines until the mesh is ready, then a compact view redrawn in place."""

    def __init__(self) -> None:
        self.started_s = time.monotonic()
        self.ready_after_s: float | None = None
        self.drawn_lines = 0
        self.tty = sys.stdout.isatty()
        self.next_plain_s = 0.0

    def __call__(self, health: dict[str, Any]) -> None:
        elapsed_s = time.monotonic() - self.started_s
        if self.ready_after_s is None and health["ready"]:
            self.ready_after_s = elapsed_s
            print(f"mesh ready after {elapsed_s:.1f} s (Ctrl-C stops it)", flush=True)
            self.drawn_lines = 0
            self.next_plain_s = 0.0
        if self.ready_after_s is None:
            lines = [progress_line(health, elapsed_s)]
        else:
            lines = live_lines(health)
        self._draw(lines)

    def _draw(self, lines: list[str]) -> None:
        now = time.monotonic()
        if self.tty and self.drawn_lines:
            sys.stdout.write(f"\x1b[{self.drawn_lines}F\x1b[J")
        elif not self.tty and now < self.next_plain_s:
            return  # not a terminal: a new block every few seconds, not twice a second
        self.next_plain_s = now + PROGRESS_PRINT_S * (1 if self.ready_after_s is None else 15)
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn_lines = len(lines)
