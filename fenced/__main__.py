"""The ``fenced`` command line. The only module that exits the process.

Exit codes: 0 success, 1 invalid configuration, a host that cannot run fenced, an HTTP
listen address that cannot be used or (for ``status``) a daemon that does not answer,
2 usage errors (argparse), 3 a firewall error at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from fenced import __version__
from fenced.config.files import DEFAULT_PATH, load
from fenced.config.schema import LOG_LEVELS
from fenced.core.model import Config
from fenced.core.ruleset import layout, script
from fenced.daemon import run_daemon
from fenced.errors import ConfigError, FirewallError, HttpError, SystemCheckError
from fenced.kernel.firewall import KernelFirewall
from fenced.log import log, route_library_logs
from fenced.ops.status import DEFAULT_URL, fetch_status, format_status

DEFAULT_CONFIG = DEFAULT_PATH
#: First stand-in port ``fenced render`` shows for the DNS gateways (real ones are chosen
#: by the kernel when ``fenced run`` starts them).
RENDER_GATEWAY_PORT = 50053


def _count(n: int, one: str, many: str) -> str:
    """``n`` and the noun that goes with it: ``1 domain``, ``0 domains``, ``3 domains``."""
    return f"{n} {one if n == 1 else many}"


def _summary(cfg: Config) -> str:
    lines = [
        f"ok: {_count(len(cfg.files), 'file', 'files')}, "
        f"{_count(len(cfg.policies), 'policy', 'policies')}, table inet {cfg.daemon.table}"
    ]
    for p in cfg.policies:
        subjects = []
        if p.uids:
            subjects.append("uids " + ",".join(str(u) for u in p.uids))
        if p.gids:
            subjects.append("gids " + ",".join(str(g) for g in p.gids))
        if p.cgroups:
            subjects.append("cgroups " + ",".join(p.cgroups))
        lines.append(
            f"  {p.name} ({p.mode}): {'; '.join(subjects)}; {len(p.outbound)} outbound "
            f"({_count(len(p.domains), 'domain', 'domains')}), {len(p.inbound)} inbound, loopback "
            f"{'yes' if p.loopback else 'no'}"
        )
    return "\n".join(lines)


def _print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the configuration and print a summary."""
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    print(_summary(cfg))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Print the nft script fenced would install."""
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    lay = layout(cfg)
    # The gateways' loopback ports are chosen when they start; show stand-ins.
    ports = {name: RENDER_GATEWAY_PORT + i for i, name in enumerate(lay.gateways)}
    sys.stdout.write(script(cfg, lay, gateway_ports=ports))
    if ports:
        print("# DNS gateway ports are chosen at run time; shown here as:")
        for name, port in ports.items():
            print(f"#   policy {name}: {port}")
    if lay.cgroups:
        print("# cgroup ids are written at run time over netlink:")
        for c in lay.cgroups:
            print(f"#   {c.path} (level {c.level}) -> {c.out_map}, {c.in_map}: policy {c.policy}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    if args.log_level is not None:
        log.set_level(args.log_level)
    route_library_logs(log)
    firewall = KernelFirewall()
    try:
        asyncio.run(run_daemon(args.config, firewall, log_level=args.log_level))
    except ConfigError as exc:
        _print_config_error(exc)
        print("fenced: cannot start: invalid configuration", file=sys.stderr)
        return 1
    except (SystemCheckError, HttpError) as exc:
        print(f"fenced: cannot start: {exc}", file=sys.stderr)
        return 1
    except FirewallError as exc:
        print(f"fenced: firewall error: {exc}", file=sys.stderr)
        return 3
    finally:
        firewall.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print a running daemon's status (``--json``: the raw document); 1 if it does not answer."""
    try:
        doc = fetch_status(args.url, timeout=args.timeout)
    except HttpError as exc:
        print(f"fenced status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(format_status(doc))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fenced`` command."""
    parser = argparse.ArgumentParser(
        prog="fenced", description="Confine processes' network access."
    )
    parser.add_argument("--version", action="version", version=f"fenced {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("check", cmd_check, "validate the configuration"),
        ("render", cmd_render, "print the ruleset, touching nothing"),
        ("run", cmd_run, "install the ruleset and keep it current"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "-c",
            "--config",
            dest="config_opt",
            metavar="PATH",
            help=f"main config file; fenced.d/*.toml beside it are read too "
            f"(default {DEFAULT_CONFIG})",
        )
        p.add_argument("config_pos", nargs="?", metavar="PATH", help="same as -c PATH")
        if name == "run":
            p.add_argument(
                "--log-level",
                choices=tuple(LOG_LEVELS),
                help="log only events at this level or above, whatever daemon.log_level "
                "says (default: daemon.log_level, which defaults to info)",
            )
        p.set_defaults(func=func)
    p = sub.add_parser("status", help="show a running daemon's status (over HTTP)")
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the daemon's HTTP address (default {DEFAULT_URL})"
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fenced`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "config_opt"):
        if args.config_opt and args.config_pos and args.config_opt != args.config_pos:
            parser.error("give the config file once, with -c or as an argument")
        args.config = args.config_opt or args.config_pos or DEFAULT_CONFIG
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
