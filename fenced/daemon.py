"""The running daemon: installs the ruleset, keeps run-time sets current, obeys signals.

Start-up is ordered: read the config, check the host, start the DNS gateways, install
the ruleset (one nft transaction that keeps any addresses and cgroup ids already in the
table), write the cgroup ids, then delete stale chains and a renamed table's predecessor
(one more nft transaction, when there are any), delete the conntrack entries of DNS flows
still redirected to a gateway port that is gone, then serve. Signal handlers only record
what was asked; the main loop acts. Every firewall change goes through one lock, so the
kernel sees them in a known order.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fenced.aio import wait_event
from fenced.config.files import load
from fenced.core.events import CgroupsWritten, ConfigLoaded, TableRepaired
from fenced.core.model import Config, IPAddress, LogLevel, Target
from fenced.core.ruleset import (
    Layout,
    cgroup_elements,
    cgroup_maps_in,
    cgroup_ops,
    cleanup,
    install,
    layout,
    stale_chains,
)
from fenced.dns.gateway import Gateway
from fenced.dns.refresher import Learned, Refresher, RefreshInputs, refresh_inputs
from fenced.dns.resolver import DnsResolver, Resolver
from fenced.errors import ConfigError, FencedError, FirewallError, SystemCheckError
from fenced.kernel.cgroups import CgroupWatcher, find_cgroup2_mount
from fenced.kernel.conntrack import Conntrack, KernelConntrack
from fenced.kernel.firewall import OWN_NFT_PIDS, Firewall
from fenced.kernel.monitor import OWN_PORTIDS, Commit, NftMonitor
from fenced.log import Logger, log
from fenced.ops.http import HttpServer
from fenced.ops.metrics import Metrics
from fenced.ops.notify import Notifier
from fenced.ops.status import build_status

CAP_NET_ADMIN = 12


def has_cap_net_admin(status_text: str) -> bool:
    """Whether a /proc/<pid>/status text shows CAP_NET_ADMIN in the effective set."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def preflight() -> None:
    """Raise SystemCheckError with a one-line reason if this host cannot run fenced."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        raise SystemCheckError(f"cannot read /proc/self/status: {exc.strerror}") from exc
    if not has_cap_net_admin(status):
        raise SystemCheckError("CAP_NET_ADMIN is missing (run as root or grant the capability)")
    if not Path("/proc/net/netfilter").exists() and not Path("/sys/module/nf_tables").exists():
        raise SystemCheckError("the kernel has no nf_tables support")


@dataclass
class State:
    """What the daemon reports about itself (read by the HTTP server and tests)."""

    config_path: str
    started: float = field(default_factory=time.time)
    generation: int = 0
    installed: bool = False
    last_reload: str = "none"
    last_reload_time: float | None = None
    last_reload_error: str | None = None
    cgroup_ids: dict[str, int | None] = field(default_factory=dict)
    repairs: int = 0


class Daemon:
    """One fenced instance bound to a config path and a firewall.

    ``loader`` reads a config (``fenced.config.files.load`` by default); ``cgroup_root`` is the
    cgroup2 mount (found from /proc/mounts when None and a policy names cgroups).
    ``log_level`` (``fenced run --log-level``), when given, is the level of ``logger``
    whatever the configuration says; otherwise ``daemon.log_level`` is applied at start
    and by every successful reload.
    ``conntrack`` is the connection tracking table whose stale gateway DNS flows are
    deleted after each install (None: left alone, for tests that run no real gateway).
    """

    def __init__(
        self,
        config_path: str,
        firewall: Firewall,
        *,
        loader: Callable[[str], Config] = load,
        cgroup_root: str | None = None,
        logger: Logger = log,
        resolver_factory: Callable[[Config], Resolver] | None = None,
        monitor_factory: Callable[[str], NftMonitor] | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        first_resolution_timeout: float = 10.0,
        log_level: LogLevel | None = None,
        conntrack: Conntrack | None = None,
    ) -> None:
        self.config_path = config_path
        self.fw = firewall
        self.loader = loader
        self.log = logger
        self._log_level = log_level
        self.state = State(config_path)
        self.config: Config | None = None
        self.layout: Layout | None = None
        #: What the refresher is told at start, reload and repair: made with the layout.
        self.inputs: RefreshInputs | None = None
        self._cgroup_root = cgroup_root
        self._watcher: CgroupWatcher | None = None
        self._fw_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._requests: list[str] = []
        self._cgroup_dirty = False
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier(None)
        self.http: HttpServer | None = None
        self._first_resolution_timeout = first_resolution_timeout
        self._resolver_factory = resolver_factory or default_resolver
        self.refresher: Refresher | None = None
        self.gateways: dict[str, Gateway] = {}
        self._monitor_factory = monitor_factory
        self._monitor: NftMonitor | None = None
        self._repair_due = False
        self.conntrack = conntrack

    # ------------------------------------------------------------------ signals
    def request(self, what: str) -> None:
        """Record a request (``reload`` or ``stop``); the main loop acts on it. Signal-safe."""
        self._requests.append(what)
        self._wake.set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM/SIGINT ask to stop, SIGHUP to reload."""
        loop.add_signal_handler(signal.SIGTERM, self.request, "stop")
        loop.add_signal_handler(signal.SIGINT, self.request, "stop")
        loop.add_signal_handler(signal.SIGHUP, self.request, "reload")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the config and install it; raises ConfigError/FencedError when impossible."""
        cfg = self.loader(self.config_path)
        self._set_log_level(cfg)
        if cfg.daemon.listen:
            # Bind first: a taken port fails start-up before the table is touched.
            self.http = HttpServer(cfg.daemon.listen, self, self.metrics, logger=self.log)
            await self.http.start()
        await self._start_gateways(cfg)
        await self._apply(cfg)
        await self._forget_stale_dns_flows()
        assert self.inputs is not None
        self.refresher = Refresher(
            self.fw,
            self._resolver_factory(cfg),
            lock=self._fw_lock,
            observe=self.metrics.observe,
        )
        await self.refresher.start(cfg.daemon, self.inputs)
        self._watch_table(cfg.daemon.table)
        await self._first_resolutions()
        self.state.last_reload = "ok"
        self.state.last_reload_time = time.time()
        self.metrics.observe(ConfigLoaded(True, self.state.last_reload_time, initial=True))
        self.notifier.ready(f"enforcing {len(cfg.policies)} policies")
        self.log.info(
            "started",
            config=self.config_path,
            table=cfg.daemon.table,
            policies=[p.name for p in cfg.policies],
        )

    async def _first_resolutions(self) -> None:
        """Wait (bounded) until every configured name had its first answer or failure."""
        deadline = time.monotonic() + self._first_resolution_timeout
        while self.refresher is not None and time.monotonic() < deadline:
            if all(n.last_status is not None for n in self.refresher.status().values()):
                return
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        """Start, then serve requests until asked to stop; then stop in order."""
        loop = asyncio.get_running_loop()
        self.install_signal_handlers(loop)
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        watchdog = self.notifier.watchdog_interval()
        try:
            while True:
                if not await wait_event(self._wake, watchdog):
                    if self.health()[0]:
                        self.notifier.watchdog()
                    continue
                self._wake.clear()
                requests, self._requests = self._requests, []
                if "stop" in requests:
                    break
                if "reload" in requests:
                    await self.reload()
                if self._repair_due:
                    self._repair_due = False
                    await self._guarded(self.repair(), "repair_failed")
                if self._cgroup_dirty:
                    self._cgroup_dirty = False
                    await self._guarded(self.sync_cgroups(), "cgroup_sync_failed")
        finally:
            await self.stop()

    async def _guarded(self, coro: Awaitable[None], event: str) -> None:
        try:
            await coro
        except FencedError as exc:
            self.log.error(event, error=str(exc))

    async def reload(self) -> bool:
        """Read the config again and apply it; on any error keep the running one."""
        self.log.info("reload_requested", config=self.config_path)
        self.notifier.reloading()
        try:
            return await self._reload()
        finally:
            self.notifier.ready_after_reload()

    async def _reload(self) -> bool:
        started: list[str] = []
        try:
            # Off the event loop: a slow file system never stalls refreshes or repairs.
            cfg = await asyncio.to_thread(self.loader, self.config_path)
            old = self.config
            started = await self._start_gateways(cfg)
            await self._apply(cfg)
            started = []
            await self._forget_stale_dns_flows()
            await self._retire_gateways(cfg)
            assert self.inputs is not None
            if self.refresher is not None:
                changed = old is None or old.daemon.resolvers != cfg.daemon.resolvers
                resolver = self._resolver_factory(cfg) if changed else None
                await self.refresher.configure(cfg.daemon, self.inputs, resolver)
            if old is None or old.daemon.table != cfg.daemon.table:
                self._watch_table(cfg.daemon.table)
        except ConfigError as exc:
            self._reload_failed(exc)
            for p in exc.problems:
                self.log.error("config_invalid", problem=str(p))
            return False
        except (FencedError, OSError) as exc:
            self._reload_failed(exc)
            self.log.error("reload_failed", error=str(exc))
            return False
        finally:
            for name in started:  # the new ruleset never went in: its gateways go too
                await self.gateways.pop(name).stop()
        if self.config is not None:
            self._set_log_level(self.config)
        self.state.last_reload = "ok"
        self.state.last_reload_time = time.time()
        self.state.last_reload_error = None
        self.metrics.observe(ConfigLoaded(True, self.state.last_reload_time))
        if self.config is not None and self.config.daemon.listen != (
            self.http.listen if self.http is not None else ""
        ):
            self.log.warning(
                "listen_change_needs_restart",
                listen=self.config.daemon.listen,
                note="the HTTP address is bound at start; restart fenced to move it",
            )
        self.log.info("reloaded", generation=self.state.generation)
        return True

    def _set_log_level(self, cfg: Config) -> None:
        """Log at ``--log-level`` when it was given, else at ``cfg``'s ``daemon.log_level``."""
        self.log.set_level(self._log_level or cfg.daemon.log_level)

    def _reload_failed(self, exc: Exception) -> None:
        self.state.last_reload = "error"
        self.state.last_reload_time = time.time()
        self.state.last_reload_error = str(exc)
        self.metrics.observe(ConfigLoaded(False, self.state.last_reload_time))

    async def stop(self) -> None:
        """Stop in order: HTTP, watchers, refresher, then the table as ``on_exit`` says."""
        self.notifier.stopping()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        for gw in self.gateways.values():
            await gw.stop()
        self.gateways.clear()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if self._watcher is not None:
            self._watcher.stop(loop)
        self._unwatch_table()
        if self.refresher is not None:
            await self.refresher.stop()
        if self.config is not None and self.config.daemon.on_exit == "remove":
            async with self._fw_lock:
                await self.fw.delete_table(self.config.daemon.table)
            self.log.info("stopped", table=self.config.daemon.table, table_kept=False)
        elif self.config is not None:
            self.log.info("stopped", table=self.config.daemon.table, table_kept=True)

    # ------------------------------------------------------------------ tampering
    def _watch_table(self, table: str) -> None:
        """Listen for changes other processes make to ``table`` (when a monitor exists)."""
        self._unwatch_table()
        if self._monitor_factory is None:
            return
        try:
            self._monitor = self._monitor_factory(table)
        except OSError as exc:
            self.log.error("monitor_unavailable", table=table, error=str(exc))
            return
        asyncio.get_running_loop().add_reader(self._monitor.fileno(), self._on_commits)

    def _unwatch_table(self) -> None:
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None

    def _on_commits(self) -> None:
        assert self._monitor is not None
        try:
            commits = self._monitor.read()
        except OSError as exc:
            self.log.error("monitor_failed", error=str(exc))
            commits = []
            self._monitor.overrun = True
        foreign = [c for c in commits if c.changes and not _is_own(c)]
        for c in foreign:
            self.log.warning(
                "table_tampered",
                table=self.config.daemon.table if self.config else None,
                pid=c.pid,
                process=c.process,
                changes=[f"{k}x{v}" for k, v in sorted(c.changes.items())],
            )
        if foreign or self._monitor.overrun:
            self._monitor.overrun = False
            self._repair_due = True
            self._wake.set()

    async def repair(self) -> None:
        """Put the table back as it should be: ruleset, cgroup ids and set elements.

        Called when another process changed fenced's table (deleted it, flushed it,
        removed elements...). Reinstalling is idempotent, so nothing is compared first.
        """
        cfg = self.config
        if cfg is None:
            return
        await self._apply(cfg, repair=True)
        if self.refresher is not None and self.inputs is not None:
            # The same inputs as at start and reload: every set, wildcard-only ones too,
            # so learned addresses are written back and new ones accepted.
            await self.refresher.configure(cfg.daemon, self.inputs)
        self.state.repairs += 1
        self.metrics.observe(TableRepaired())
        self.log.warning("table_repaired", table=cfg.daemon.table, repairs=self.state.repairs)

    # ------------------------------------------------------------------ applying
    async def _apply(self, cfg: Config, *, repair: bool = False) -> None:
        """Install ``cfg``'s ruleset and subjects, keeping everything else on failure."""
        lay = layout(cfg)
        paths = [c.path for c in lay.cgroups]
        root = self._cgroup_root
        if paths and root is None:
            root = self._cgroup_root = find_cgroup2_mount()
        async with self._fw_lock:
            old_table = self.config.daemon.table if self.config is not None else None
            existing = await self.fw.existing(lay.table)
            have = {}
            if existing is not None:
                have = {m: await self.fw.dump(lay.table, m) for m in cgroup_maps_in(existing)}
            stale_kept = stale_chains(lay, have)
            ports = {name: gw.port for name, gw in self.gateways.items()}
            await self.fw.install(
                install(cfg, lay, existing, keep_chains=stale_kept, gateway_ports=ports)
            )
            self.config, self.layout, self.inputs = cfg, lay, refresh_inputs(cfg, lay)
            self.state.installed = True
            if not repair:
                self.state.generation += 1
            if root is not None or paths:
                assert root is not None
                if self._watcher is None:
                    self._watcher = CgroupWatcher(root, paths, self._on_cgroups_changed)
                    self._watcher.start(asyncio.get_running_loop())
                else:
                    self._watcher.set_paths(paths)
                    self._cgroup_dirty = False
            await self._write_cgroups()
            # Only now: the new table's cgroup maps are full, and no element jumps to a
            # stale chain any more (the kernel cannot take cgroup ids in nft's text).
            renamed = old_table if old_table is not None and old_table != lay.table else None
            if stale_kept or renamed is not None:
                await self.fw.install(cleanup(lay.table, stale_kept, renamed))
        self.log.info(
            "ruleset_installed",
            table=lay.table,
            generation=self.state.generation,
            chains=len(lay.chains),
            sets=len(lay.set_names),
        )

    def _on_cgroups_changed(self, ids: Mapping[str, int | None]) -> None:
        self._cgroup_dirty = True
        self._wake.set()

    async def sync_cgroups(self) -> None:
        """Bring the cgroup verdict maps in line with the cgroups that exist now."""
        async with self._fw_lock:
            await self._write_cgroups()

    async def _write_cgroups(self) -> None:
        lay = self.layout
        if lay is None:
            return
        ids = dict(self._watcher.ids) if self._watcher is not None else {}
        wanted = cgroup_elements(lay, ids)
        have = {name: await self.fw.dump(lay.table, name) for name in wanted}
        ops = cgroup_ops(lay.table, wanted, have)
        if ops:
            await self.fw.apply(ops)
            self.metrics.observe(CgroupsWritten())
        previous, self.state.cgroup_ids = self.state.cgroup_ids, ids
        for path, now_id in sorted(ids.items()):
            if path not in previous or previous[path] != now_id:
                shown = now_id if now_id is not None else "absent"
                self.log.info("cgroup_bound", cgroup=path, id=shown)

    # ------------------------------------------------------------------ DNS gateway
    async def _start_gateways(self, cfg: Config) -> list[str]:
        """Start a listener for each gateway policy that has none; return their names.

        Listeners come before the ruleset that redirects to them, so no query meets a
        closed port. Kept policies keep their port (and get the new policy on success).
        """
        started: list[str] = []
        try:
            for policy in cfg.policies:
                if policy.dns != "gateway" or policy.name in self.gateways:
                    continue
                # Containers' DNS is redirected as it comes in, to the address of the
                # interface it arrived on: listen on every address (the ruleset's guard
                # lets only the policy's own zone reach the port).
                forwarded = bool(policy.interfaces or policy.sources)
                gw = Gateway.for_policy(
                    policy,
                    cfg.daemon,
                    learn=self._learn,
                    port=0,
                    hosts=("0.0.0.0", "::") if forwarded else ("127.0.0.1", "::1"),
                    observe=self.metrics.observe,
                    logger=self.log,
                )
                await gw.start()
                self.gateways[policy.name] = gw
                started.append(policy.name)
                self.log.info("gateway_listening", policy=policy.name, port=gw.port)
        except OSError:
            for name in started:
                await self.gateways.pop(name).stop()
            raise
        return started

    async def _forget_stale_dns_flows(self) -> None:
        """Delete the conntrack entries of DNS flows redirected to a gone gateway port.

        A restart, or a reload that starts a new gateway, gives a policy's gateway a new
        port; entries of its zone still name the old one. Called right after the ruleset
        that redirects to the current ports is in. A failure is logged: such a flow's
        lookups fail (at once), nothing is opened.
        """
        lay = self.layout
        if self.conntrack is None or lay is None:
            return
        ports = {lay.zones[n]: gw.port for n, gw in self.gateways.items() if n in lay.zones}
        try:
            forgotten = await self.conntrack.forget_stale_redirects(ports)
        except FencedError as exc:
            self.log.error("dns_flows_not_forgotten", error=str(exc))
            return
        if forgotten:
            self.log.info("dns_flows_forgotten", flows=forgotten)

    async def _retire_gateways(self, cfg: Config) -> None:
        """After a reload went in: reconfigure kept gateways, stop those no longer wanted."""
        wanted = {p.name: p for p in cfg.policies if p.dns == "gateway"}
        for name in list(self.gateways):
            policy = wanted.get(name)
            if policy is None:
                await self.gateways.pop(name).stop()
            else:
                self.gateways[name].configure(policy, cfg.daemon)

    async def _learn(
        self,
        policy: str,
        qname: str,
        targets: tuple[Target, ...],
        ips: tuple[IPAddress, ...],
        ttl: int,
    ) -> None:
        """The gateways' hook: put an answer's addresses in the policy's sets, then return."""
        inputs, refresher = self.inputs, self.refresher
        if inputs is None or refresher is None:
            raise FirewallError("learn", "fenced is not running yet")
        sets = inputs.sets_for(policy, (t.domain for t in targets if t.domain is not None))
        await refresher.learn(Learned(policy, qname), sets, ips, ttl)

    # ------------------------------------------------------------------ status (HTTP)
    def health(self) -> tuple[bool, str]:
        """(True, "ok") when the ruleset is installed and the refresher runs, else the reason."""
        if not self.state.installed:
            return False, "no ruleset installed"
        if self.refresher is None or not self.refresher.running:
            return False, "the DNS refresher is not running"
        return True, "ok"

    def status(self) -> dict[str, object]:
        """The /status document."""
        r = self.refresher
        return build_status(
            self.state,
            self.config,
            r.status() if r is not None else {},
            mono_now=r.clock.now() if r is not None else time.monotonic(),
            wall_now=time.time(),
            health=self.health(),
            learned=r.learned() if r is not None else None,
        )

    async def refresh_counters(self) -> None:
        """Update the metrics that need I/O (denial counters) or a walk of the cache."""
        cfg = self.config
        if cfg is None:
            return
        if self.refresher is not None:
            self.metrics.update_policies(cfg, self.refresher.status(), self.refresher.learned())
        counters = await self.fw.counters(cfg.daemon.table)
        self.metrics.update_denied([p.name for p in cfg.policies], counters)


def _is_own(commit: Commit) -> bool:
    """Whether a commit came from fenced: its netlink sockets or the nft runs it started.

    Judged by the committing socket's netlink port, which the kernel numbers from the
    process id *as the committer's PID namespace sees it*, so this holds in a container
    with its own PID namespace too (the commit's ``pid`` is the initial namespace's, and
    names a thread when a worker thread wrote).
    """
    return commit.portid in OWN_PORTIDS or commit.portid in OWN_NFT_PIDS


def default_resolver(cfg: Config) -> Resolver:
    """A dnspython resolver asking ``cfg``'s resolvers (resolv.conf's when none are set)."""
    if cfg.daemon.resolvers:
        return DnsResolver([str(r) for r in cfg.daemon.resolvers])
    return DnsResolver.from_system()


async def run_daemon(
    config_path: str, firewall: Firewall, *, log_level: LogLevel | None = None
) -> None:
    """Check the host, then run a daemon until it is asked to stop.

    ``log_level`` overrides the configuration's ``daemon.log_level`` (see :class:`Daemon`).
    """
    preflight()
    daemon = Daemon(
        config_path,
        firewall,
        monitor_factory=NftMonitor,
        notifier=Notifier.from_env(),
        log_level=log_level,
        conntrack=KernelConntrack(),
    )
    await daemon.run()


__all__ = ["Daemon", "State", "has_cap_net_admin", "preflight", "run_daemon"]
