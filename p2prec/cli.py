"""The ``p2prec`` command: one entry point for every process, and the only ``asyncio.run()``.

    p2prec version
    p2prec config show [--config FILE_OR_PRESET] [--set KEY=VALUE ...] [--json]
    p2prec config check FILE_OR_PRESET
    p2prec keygen [--config FILE_OR_PRESET] [--set KEY=VALUE ...] [--force]
    p2prec trainer [--config FILE_OR_PRESET] [--set KEY=VALUE ...] [--device D] [--steps N]
    p2prec up [--detach] [--run-dir DIR] ... / p2prec down / p2prec status [--json]
    p2prec chaos ACTION [--backend compose|local] ...

Errors (bad config, existing keys, I/O) exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import sys
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from p2prec import __version__
from p2prec.config import Config, ConfigError, load_config

if TYPE_CHECKING:  # the serving modules load only in the commands that serve
    from p2prec.io.node import NodeDriver
    from p2prec.serve.server import Server

EXIT_OK = 0
EXIT_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# --- helpers ---------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """A TOML value (``7000``, ``true``, ``["a:1"]``, ``"x"``), else the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. mesh.port=7946")
        overrides[key.strip()] = _parse_value(text.strip())
    return overrides


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, _parse_sets(args.set))


def _config_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="FILE_OR_PRESET",
        help="TOML file or preset name (local, lan, wan); default: the lan preset",
    )
    parent.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one key, e.g. --set mesh.port=7946 (repeatable)",
    )
    return parent


# --- commands --------------------------------------------------------------------------------


def _cmd_version(_args: argparse.Namespace) -> int:
    from p2prec.wire.messages import PROTOCOL_VERSION

    print(
        f"p2prec {__version__} (wire protocol {PROTOCOL_VERSION}, "
        f"Python {platform.python_version()})"
    )
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.json:
        print(orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(config.to_toml_commented(), end="")
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    load_config(args.file)
    print("ok")
    return EXIT_OK


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CliError(f"{', '.join(existing)}: already exists (use --force to overwrite)")


def _cmd_keygen(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.curve:
        return _curve_keygen(config.keys.curve_dir, args.curve, args.force)
    private = Path(config.keys.trainer_signing_key)
    public = Path(config.keys.trainer_public_key)
    _refuse_overwrite((private, public), args.force)
    from p2prec.log import configure_logging, get_logger
    from p2prec.wire import signing

    signer = signing.Signer.generate()
    try:
        signer.save(private)
        signing.save_public_key(public, signer.public_key_bytes)
    except OSError as exc:
        raise CliError(f"keygen: {exc}") from None
    configure_logging(config.log.format, config.log.level, config.node.id, config.node.dc)
    get_logger(__name__).info(
        "keys_generated",
        signing_key=str(private),
        public_key=str(public),
        public_key_hex=signer.public_key_bytes.hex(),
    )
    return EXIT_OK


def _curve_keygen(curve_dir: str, node_ids: list[str], force: bool) -> int:
    """CURVE key pairs for mesh members: curve_dir/<id>.key (public: the allow-list) and
    curve_dir/<id>.key_secret (stays on that member's machine)."""
    from p2prec.io.curve import generate_node_keys

    for node_id in node_ids:
        try:
            public, secret = generate_node_keys(curve_dir, node_id, force=force)
        except (FileExistsError, ValueError, OSError) as exc:
            raise CliError(f"keygen --curve: {exc}") from None
        print(f"{node_id}: {public} {secret}")
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------


def _add_config_commands(sub: Any, options: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", help="show or check the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show", parents=[options], help="print the effective config (commented TOML)"
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(handler=_cmd_config_show)
    check = config_sub.add_parser("check", help="validate a config file: 'ok' or the error")
    check.add_argument("file", metavar="FILE_OR_PRESET")
    check.set_defaults(handler=_cmd_config_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2prec",
        description="Peer-to-peer dissemination of recommendation model parameters.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    options = _config_options()
    sub.add_parser("version", help="print the version").set_defaults(handler=_cmd_version)
    _add_config_commands(sub, options)
    keygen = sub.add_parser(
        "keygen", parents=[options], help="write the trainer's Ed25519 key pair (keys.*)"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.add_argument(
        "--curve",
        nargs="+",
        metavar="NODE_ID",
        help="instead: CURVE key pairs of these mesh members, in keys.curve_dir",
    )
    keygen.set_defaults(handler=_cmd_keygen)
    _add_sim_command(sub)
    node = sub.add_parser(
        "node", parents=[options], help="run one mesh member (node, or the trainer's publisher)"
    )
    node.add_argument(
        "--synthetic-rate",
        type=float,
        default=0.0,
        metavar="STEPS_PER_S",
        help="trainer only: publish a synthetic delta stream at this rate",
    )
    node.add_argument(
        "--synthetic-rows",
        type=int,
        default=100,
        metavar="N",
        help="ids per table per synthetic step (default 100)",
    )
    node.add_argument(
        "--synthetic-steps",
        type=int,
        default=0,
        metavar="N",
        help="stop the synthetic stream after N steps (default: never)",
    )
    node.add_argument(
        "--synthetic-validate-every",
        type=int,
        default=20,
        metavar="N",
        help="validate the head every N synthetic steps (default 20; 0: never)",
    )
    node.add_argument(
        "--synthetic-wait-members",
        type=int,
        default=0,
        metavar="N",
        help="start the synthetic stream once N other members are alive in the trainer's "
        "view (at most 60 s; default 0: at once)",
    )
    node.set_defaults(handler=_cmd_node)
    _add_trainer_command(sub, options)
    _add_operations_commands(sub)
    return parser


def _add_operations_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`p2prec up/down/status` (the local mesh) and `p2prec chaos` (fault injection)."""
    from p2prec.chaos.cli import add_chaos_command
    from p2prec.localmesh.commands import add_localmesh_commands

    add_localmesh_commands(sub)
    add_chaos_command(sub)


def _cmd_node(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; the only asyncio.run() of the program."""
    config = _load(args)
    from p2prec.io.heap import keep_freed_heap
    from p2prec.log import configure_logging

    configure_logging(config.log.format, config.log.level, config.node.id, config.node.dc)
    keep_freed_heap(config.node.heap_keep_mib)
    if args.synthetic_rate and config.node.role != "trainer":
        raise CliError("--synthetic-rate: only the trainer (node.role = 'trainer') publishes")
    try:
        asyncio.run(_serve_node(config, args))
    except (OSError, ValueError) as exc:
        raise CliError(f"node: {exc}") from None
    return EXIT_OK


async def _serve_node(config: Config, args: argparse.Namespace) -> None:
    from p2prec.io.node import NodeDriver
    from p2prec.io.synthetic import SyntheticStream, run_stream
    from p2prec.serve.app import make_node_app
    from p2prec.serve.server import serve_http
    from p2prec.wire.signing import Signer, Verifier

    verifier = Verifier.load(config.keys.trainer_public_key)
    signer = Signer.load(config.keys.trainer_signing_key) if config.node.role == "trainer" else None
    driver = NodeDriver(config, verifier, signer)
    stop = asyncio.Event()
    _handle_signals(stop, driver)
    await driver.start()
    stream = None
    server: Server | None = None
    if args.synthetic_rate > 0:
        spec = SyntheticStream(
            args.synthetic_rate,
            args.synthetic_rows,
            steps=args.synthetic_steps,
            validate_every=args.synthetic_validate_every,
            wait_members=args.synthetic_wait_members,
        )
        stream = asyncio.create_task(run_stream(driver, spec))
    try:
        threaded = config.http.serving_thread
        server = await serve_http(
            driver, config.http, lambda: make_node_app(driver, config), threaded=threaded
        )
        if threaded and server is not None:
            _queries_first(config, server, lower=not driver.is_publisher)
        await stop.wait()
    finally:
        if server is not None:
            await server.stop()
        if stream is not None:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
        await driver.close()


def _handle_signals(stop: asyncio.Event, driver: NodeDriver) -> None:
    """SIGINT and SIGTERM set ``stop``; SIGHUP re-reads the allow-list (on the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_allow_list, driver)


def _reload_allow_list(driver: NodeDriver) -> None:
    """SIGHUP: re-read ``keys.curve_dir``, so a member added since the start may connect
    without a restart of the mesh. A bad certificate is logged and the old list kept."""
    from p2prec.log import get_logger

    log = get_logger(__name__)
    try:
        allowed = driver.transport.reload_allow_list()
    except (OSError, ValueError) as exc:
        log.error("allow_list_reload_failed", error=str(exc), kept=True)
        return
    log.info("allow_list_reloaded", allowed=allowed)


def _queries_first(config: Config, server: Server, lower: bool) -> None:
    """A node process with a serving thread: the GIL switches within the configured interval,
    and, when ``lower``, every other thread runs at a lower CPU priority
    (``p2prec.io.priority``). Not the publisher's: its replication is the root of every
    delta's path (as ``p2prec trainer``, which serves operators on its loop at equal
    priority)."""
    from p2prec.io.priority import lower_other_threads
    from p2prec.serve.server import ThreadedServer

    if not isinstance(server, ThreadedServer) or server.native_id is None:  # no serving thread
        return
    sys.setswitchinterval(config.http.gil_switch_interval_ms / 1000)
    if lower:
        lower_other_threads(config.http.replication_nice, keep={server.native_id})


def _add_trainer_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], options: argparse.ArgumentParser
) -> None:
    trainer = sub.add_parser(
        "trainer",
        parents=[options],
        help="train online (torch) and publish signed deltas into the mesh (node.role = trainer)",
    )
    trainer.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="torch device; auto: CUDA when present, else the CPU (default: trainer.device)",
    )
    trainer.add_argument(
        "--steps",
        type=int,
        default=0,
        metavar="N",
        help="stop after N training steps (default: until SIGINT/SIGTERM or the log's end)",
    )
    trainer.set_defaults(handler=_cmd_trainer)


def _cmd_trainer(args: argparse.Namespace) -> int:
    """Run the trainer's driver and training loop; checkpoint and stop cleanly at the end."""
    if args.steps < 0:
        raise CliError(f"--steps: expected N >= 0, got {args.steps}")
    config = load_config(args.config, {**_parse_sets(args.set), "node.role": "trainer"})
    if config.node.id != config.mesh.publisher_id:
        raise CliError(
            f"node.id: the trainer's id must be mesh.publisher_id "
            f"({config.mesh.publisher_id!r}), got {config.node.id!r}"
        )
    from p2prec.io.heap import keep_freed_heap
    from p2prec.log import configure_logging
    from p2prec.trainer.checkpoint import CheckpointError

    configure_logging(config.log.format, config.log.level, config.node.id, config.node.dc)
    keep_freed_heap(config.node.heap_keep_mib)
    try:
        asyncio.run(_serve_trainer(config, args))
    except (OSError, ValueError, CheckpointError) as exc:
        raise CliError(f"trainer: {exc}") from None
    return EXIT_OK


async def _serve_trainer(config: Config, args: argparse.Namespace) -> None:
    from p2prec.io.node import NodeDriver
    from p2prec.serve.server import serve_http
    from p2prec.serve.trainer_app import make_trainer_app
    from p2prec.trainer.head import DriverHead
    from p2prec.trainer.runtime import Trainer, build_trainer
    from p2prec.wire.signing import Signer, Verifier

    verifier = Verifier.load(config.keys.trainer_public_key)
    driver = NodeDriver(config, verifier, Signer.load(config.keys.trainer_signing_key))
    stop = asyncio.Event()
    _handle_signals(stop, driver)
    await driver.start()
    trainer: Trainer | None = None
    server: Server | None = None
    try:
        trainer = build_trainer(config, DriverHead(driver), args.device)
        trainer.resume()
        control = trainer
        server = await serve_http(
            driver, config.http, lambda: make_trainer_app(driver, control, config)
        )
        await _until_done_or_stopped(trainer.run(args.steps), stop)
    finally:
        if server is not None:
            await server.stop()
        if trainer is not None:
            trainer.checkpoint()
        await driver.close()


async def _until_done_or_stopped(work: Coroutine[Any, Any, object], stop: asyncio.Event) -> None:
    """Run ``work`` until it ends or ``stop`` is set (then cancel it); its errors propagate."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stopper.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if not task.cancelled():
        task.result()


def _add_sim_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser("sim", help="simulate a faulty mesh over many seeds (virtual time)")
    sim.add_argument("--nodes", type=int, default=12, help="inference nodes (default 12)")
    sim.add_argument("--dcs", type=int, default=3, help="datacenters (default 3)")
    sim.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    sim.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    sim.set_defaults(handler=_cmd_sim)


def _cmd_sim(args: argparse.Namespace) -> int:
    """Print one line per seed; exit 1 if any run did not converge or broke an invariant."""
    from p2prec.sim.runner import config_for, format_result, run_seeds

    if args.nodes < 1 or args.dcs < 1 or args.seeds < 1:
        raise CliError("--nodes, --dcs and --seeds must be >= 1")
    config = config_for(args.nodes, args.dcs)
    failed = 0
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for result in run_seeds(seeds, config):
        print(format_result(result), flush=True)
        failed += not result.ok
    print(f"{args.seeds - failed} passed, {failed} failed")
    return 1 if failed else EXIT_OK


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (argparse usage errors give 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return _exit_status(exc)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ConfigError, CliError) as exc:
        print(f"p2prec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
