"""``p2prec chaos ACTION`` (also ``python -m p2prec.chaos ACTION``).

The backend is ``--backend compose|local``, or detected: a ``mesh.json`` in the run directory
means the local mesh of ``p2prec up``, else the compose mesh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2prec.chaos.actions import ACTIONS, ARGUMENTS, Backend, ChaosError
from p2prec.localmesh.runfile import DEFAULT_RUN_DIR, RunDirError, mesh_path

EXIT_OK = 0
EXIT_NOT_CONVERGED = 1
EXIT_ERROR = 2
CONVERGE_DEADLINE_S = 60.0


def add_chaos_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chaos = sub.add_parser("chaos", help="inject faults into the local or compose mesh")
    add_chaos_arguments(chaos)


def add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="chaos_action", required=True, metavar="ACTION")
    for action in ACTIONS:
        one = actions.add_parser(action, help=f"{action} {ARGUMENTS[action] or ''}".rstrip())
        _common(one)
        if ARGUMENTS[action] is not None:
            one.add_argument("argument", metavar=ARGUMENTS[action])
        one.set_defaults(handler=cmd_action, chaos_argument_name=ARGUMENTS[action])
    run = actions.add_parser("run", help="a random (seeded) schedule of faults, then convergence")
    _common(run)
    run.add_argument("--duration-s", type=float, default=30.0, help="faults for this long")
    run.add_argument("--seed", type=int, default=None, help="replay a schedule (default: random)")
    run.add_argument(
        "--converge-deadline-s",
        type=float,
        default=CONVERGE_DEADLINE_S,
        help=f"give up waiting for convergence after this (default {CONVERGE_DEADLINE_S:.0f})",
    )
    run.set_defaults(handler=cmd_run)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("compose", "local"),
        default=None,
        help="default: local when RUN_DIR/mesh.json exists, else compose",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(DEFAULT_RUN_DIR),
        help=f"local backend: the run directory of `p2prec up` (default {DEFAULT_RUN_DIR})",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="compose backend: print the commands without running them",
    )


def make_backend(args: argparse.Namespace) -> Backend:
    name = args.backend or ("local" if mesh_path(args.run_dir).exists() else "compose")
    if name == "local":
        from p2prec.chaos.local import LocalBackend

        return LocalBackend(args.run_dir.resolve())
    from p2prec.chaos.compose import ComposeBackend

    return ComposeBackend(dry_run=args.dry_run)


def _error(message: str) -> int:
    print(f"p2prec chaos: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_action(args: argparse.Namespace) -> int:
    try:
        backend = make_backend(args)
        argument = getattr(args, "argument", None)
        outcome = backend.apply(args.chaos_action, argument)
    except (ChaosError, RunDirError) as exc:
        return _error(str(exc))
    print(f"backend: {backend.name}")
    print("\n".join(outcome.lines()))
    return EXIT_ERROR if outcome.failed and not outcome.done else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import random

    from p2prec.chaos.runner import build_schedule, run_schedule

    if args.duration_s <= 0 or args.converge_deadline_s <= 0:
        return _error("--duration-s and --converge-deadline-s must be > 0")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        backend = make_backend(args)
        schedule = build_schedule(seed, args.duration_s, backend.members(), backend.supports)
        print(
            f"backend: {backend.name}; seed {seed} (replay: --seed {seed}); {len(schedule)} faults:"
        )
        for fault in schedule:
            print(f"  {fault.line()}")
        report = run_schedule(backend, schedule, args.converge_deadline_s)
    except (ChaosError, RunDirError) as exc:
        return _error(str(exc))
    if report.converged:
        print(
            f"converged {report.converge_s:.1f} s after the final heal "
            f"({report.applied} faults applied, {report.skipped} skipped; seed {seed})"
        )
        return EXIT_OK
    print(
        f"NOT converged within {args.converge_deadline_s:.0f} s after the final heal (seed {seed})"
    )
    return EXIT_NOT_CONVERGED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2prec.chaos", description=__doc__)
    add_chaos_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    code: int = args.handler(args)
    return code
