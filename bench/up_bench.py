"""Time from `p2prec up --detach` to every member ready, over a few runs (fresh run directories).

    python bench/up_bench.py [--runs 3] [--trainer torch|synthetic]

Each run starts the default mesh (trainer + 3 datacenters x 3 nodes, conf/local.toml) in a new
temporary run directory, measures until `up --detach` returns ready, then `p2prec down`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UP_TIMEOUT_S = 300.0


def one_run(run_dir: Path, trainer: str) -> float | None:
    """Seconds until ready, or None when `up` did not report ready."""
    command = [sys.executable, "-m", "p2prec.cli", "up", "--detach", "--run-dir", str(run_dir)]
    command += ["--trainer", trainer]
    started = time.monotonic()
    try:
        up = subprocess.run(
            command, capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False
        )
        elapsed_s = time.monotonic() - started
        return elapsed_s if up.returncode == 0 else None
    finally:
        down = [sys.executable, "-m", "p2prec.cli", "down", "--run-dir", str(run_dir)]
        subprocess.run(down, capture_output=True, timeout=120, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trainer", choices=("torch", "synthetic"), default="torch")
    args = parser.parse_args()
    times = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="p2prec-up-") as tmp:
            elapsed_s = one_run(Path(tmp) / "run", args.trainer)
        shown = "not ready" if elapsed_s is None else f"{elapsed_s:.1f} s"
        print(f"run {i + 1}: {shown}", flush=True)
        if elapsed_s is not None:
            times.append(elapsed_s)
    if not times:
        print("no run became ready")
        return 1
    print(
        f"p2prec up --detach -> all 10 ready: median {statistics.median(times):.1f} s, "
        f"min {min(times):.1f} s, max {max(times):.1f} s ({len(times)}/{args.runs} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
