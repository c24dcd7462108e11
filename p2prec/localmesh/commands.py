"""The ``up``, ``down`` and ``status`` subcommands of ``p2prec`` (registered by p2prec.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from p2prec.localmesh.runfile import DEFAULT_RUN_DIR, RunDirError

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_ERROR = 2
READY_DEADLINE_S = 120.0


def add_localmesh_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_up(sub)
    down = sub.add_parser("down", help="stop the local mesh started by `p2prec up`")
    _run_dir_option(down)
    down.set_defaults(handler=cmd_down)
    status = sub.add_parser("status", help="every member of the local mesh: ready, lag, root")
    _run_dir_option(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=cmd_status)


def _run_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(DEFAULT_RUN_DIR),
        help=f"the mesh's run directory (default {DEFAULT_RUN_DIR}/ under the cwd)",
    )


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", help="start the trainer and 3 datacenters x 3 nodes on 127.0.0.1 (Ctrl-C stops)"
    )
    _run_dir_option(up)
    up.add_argument(
        "--detach", action="store_true", help="run in the background; return once ready"
    )
    up.add_argument("--config", default=None, help="file or preset (default conf/local.toml)")
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key on every member (repeatable)",
    )
    _add_up_mesh_options(up)
    up.set_defaults(handler=cmd_up)


def _add_up_mesh_options(up: argparse.ArgumentParser) -> None:
    """The shape of the mesh, its trainer and its restart policy."""
    up.add_argument("--dcs", type=int, default=3, help="datacenters (default 3)")
    up.add_argument("--nodes-per-dc", type=int, default=3, help="nodes per datacenter (default 3)")
    up.add_argument(
        "--trainer",
        choices=("auto", "torch", "synthetic"),
        default="auto",
        help="torch: `p2prec trainer`; synthetic: `p2prec node --synthetic-rate` "
        "(auto: torch when installed)",
    )
    up.add_argument(
        "--synthetic-rate",
        type=float,
        default=10.0,
        metavar="STEPS_PER_S",
        help="synthetic trainer: steps per second (default 10)",
    )
    up.add_argument(
        "--synthetic-steps",
        type=int,
        default=0,
        metavar="N",
        help="synthetic trainer: stop publishing after N steps (default: never)",
    )
    up.add_argument(
        "--restart-delay-s",
        type=float,
        default=1.0,
        help="seconds before a member that died is started again (default 1)",
    )
    up.add_argument(
        "--ready-deadline-s",
        type=float,
        default=READY_DEADLINE_S,
        help=f"--detach: give up waiting for readiness after this (default {READY_DEADLINE_S:.0f})",
    )
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)


class UsageError(Exception):
    """A bad option value: one line, exit status 2."""


def _fail(message: str) -> int:
    """One line on stderr, exit status 2 (printed here: under ``python -m p2prec.cli`` the
    CLI's own error class is another module's)."""
    print(f"p2prec: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _default_config() -> str:
    local = Path("conf/local.toml")
    return str(local.resolve()) if local.is_file() else "local"


def _plan_options(args: argparse.Namespace) -> Any:
    from p2prec.localmesh.plan import PlanOptions, torch_trainer_available

    if args.dcs < 1 or args.nodes_per_dc < 1:
        raise UsageError("--dcs and --nodes-per-dc must be >= 1")
    if args.restart_delay_s < 0 or args.synthetic_rate <= 0:
        raise UsageError("--restart-delay-s must be >= 0 and --synthetic-rate > 0")
    trainer = args.trainer
    if trainer == "auto":
        trainer = "torch" if torch_trainer_available() else "synthetic"
    config = args.config or _default_config()
    if Path(config).is_file():
        config = str(Path(config).resolve())
    return PlanOptions(
        run_dir=args.run_dir.resolve(),
        config=config,
        dcs=args.dcs,
        nodes_per_dc=args.nodes_per_dc,
        trainer=trainer,
        synthetic_rate=args.synthetic_rate,
        synthetic_steps=args.synthetic_steps,
        settings=tuple(args.set),
    )


def cmd_up(args: argparse.Namespace) -> int:
    from p2prec.localmesh import control
    from p2prec.localmesh.view import TerminalView

    run_dir = args.run_dir.resolve()
    try:
        if args.supervise:
            _log_to(run_dir)
            control.supervise(run_dir, args.restart_delay_s, None)
            return EXIT_OK
        plan = control.prepare(_plan_options(args))
        print(f"{len(plan['members'])} members ({plan['trainer']} trainer) in {run_dir}")
        if not args.detach:
            _log_to(run_dir)
            control.supervise(run_dir, args.restart_delay_s, TerminalView())
            print("stopped")
            return EXIT_OK
        pid = control.start_detached(run_dir, args.restart_delay_s)
        print(f"supervisor pid {pid}; logs in {run_dir}/logs")
        health = control.wait_ready(run_dir, pid, args.ready_deadline_s)
    except (RunDirError, UsageError, OSError) as exc:
        return _fail(f"up: {exc}")
    if health is None:
        return EXIT_NOT_READY
    from p2prec.localmesh.view import status_lines

    print("\n".join(status_lines(health)))
    return EXIT_OK


def _log_to(run_dir: Path) -> None:
    """The supervisor's structlog events go to run_dir/supervisor.log (JSON lines)."""
    from p2prec.log import configure_logging

    stream = (run_dir / "supervisor.log").open("a", buffering=1)
    configure_logging("json", "info", "supervisor", "-", stream=stream)


def cmd_down(args: argparse.Namespace) -> int:
    from p2prec.localmesh.control import stop_mesh

    run_dir = args.run_dir.resolve()
    try:
        killed = stop_mesh(run_dir)
    except RunDirError as exc:
        return _fail(f"down: {exc}")
    if killed:
        print(f"stopped; sent SIGKILL to pids {', '.join(map(str, killed))} (did not stop in time)")
    else:
        print(f"stopped the mesh of {run_dir}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from p2prec.localmesh.control import print_status

    try:
        print_status(args.run_dir.resolve(), args.json)
    except RunDirError as exc:
        return _fail(f"status: {exc}")
    return EXIT_OK
