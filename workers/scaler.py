"""The scaler: parent of every worker process, growing and shrinking them with the queues.

Each step (every 100 ms, and at once when a source publishes for a function that may be short of
workers) it decides, per function,
``desired = clamp(queued + running, min_workers, max_concurrency)``, within the host's worker cap
and memory budget, sharing the cap fairly between functions. Workers are forked from this warm
process (:mod:`workers.processes`), which has already imported lambdalite, so a
cold start costs a fork. Idle workers are retired by a warm stop, never a busy one.
``max_concurrency`` holds across every scaler sharing one Redis (a Lua-guarded slot count per
function: :mod:`workers.slots`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psutil
import redis

from broker import connection, delayed, environment, kernel, pruning, rqlayout, schedules, stats
from broker.connection import TRANSIENT, connect
from broker.queues import Publisher, function_queue
from broker.registry import Function, Registry
from broker.settings import Settings
from broker.stats import alive_key
from workers import isolation, processes, recovery, slots, watchdog
from workers.limits import MB
from workers.processes import WorkerProc
from workers.scaler_views import FunctionView, ViewWriter

log = logging.getLogger("lambdalite.scaler")

STEP = 0.1  # seconds between decisions when nothing wakes the scaler
# Seconds between decisions when the host has no worker and no function has work: an idle stack
# should cost next to nothing, and a publish wakes the scaler at once anyway (a retry that comes due
# then waits for the next step, at most this long).
QUIET_STEP = 1.0
NO_REDIS_GRACE = 0.5  # seconds workers get to stop when Redis is gone
# Seconds a wake-up holds off the next one: a lone wake-up is taken up at once (a cold start), a
# stream of them (every publish wakes the scaler) costs at most one check (and step, if the check
# finds a function short of workers) per WAKE_GAP instead of one per publish, which took a tenth of
# a busy stream's CPU.
WAKE_GAP = 0.02
STOP_GRACE = 3.5  # seconds running invocations get to finish on a stop before they are handed back
ALIVE_TTL = 3  # seconds a scaler's liveness key lasts without being refreshed


class Scaler:
    """Decides and acts one step at a time; tests drive :meth:`step` directly."""

    def __init__(self, settings: Settings, registry: Registry, client: redis.Redis,
                 spawn: Callable[[Function], int] | None = None,
                 clock: Callable[[], float] = time.monotonic, adopt_orphans: bool = False) -> None:
        self.settings = settings
        self.registry = registry
        self.client = client
        self.publisher = Publisher(client, registry)
        self.host, self.sid = socket.gethostname(), uuid.uuid4().hex[:8]
        self.id = f"{self.host}.{self.sid}"
        self.spawn = spawn or self._fork_worker
        self.clock = clock
        self.views = {fn.name: FunctionView() for fn in registry}
        self.queues = {fn.name: function_queue(client, fn.name) for fn in registry}
        self.view_writer = ViewWriter(client, self.id)
        self.forked: dict[int, Function] = {}  # each worker's function as it was when forked
        # Handlers are imported by each sandbox, isolated; here only seen to import (in a child, as they will).
        isolation.plan(settings)
        environment.check_handlers(registry, settings)
        self.handlers: dict[str, Any] = {}
        self.slots = slots.Slots(client, self.id, settings.max_workers)
        self._last_sweep = -1e9
        self._last_alive = -1e9
        self._steady_since = 0.0  # since when this scaler has renewed its liveness without a gap
        self.quiet = False  # the last step saw no worker here and no work for any function
        self.memory_budget_mb = settings.memory_budget or int(psutil.virtual_memory().total / MB * 0.9)
        # Limits a worker cannot enforce (it is stopped or stuck) are enforced from here: see
        # workers.watchdog. Room for every worker, retiring ones included.
        self.board = watchdog.Board(settings.max_workers * 2 + 4)
        self.watchdog = watchdog.Watchdog(self.board)
        self.breaches: dict[str, tuple[str, str]] = {}  # worker name -> the error its event gets
        # The scaler's own process (not a test's) adopts what dead workers' invocations left, and kills it.
        self.adopt_orphans = adopt_orphans
        if adopt_orphans:
            kernel.become_subreaper()
        self.ticker = schedules.Ticker(client, registry, self.publisher, settings)
        self.pruner = pruning.Pruner(client, settings)

    # -- one step -----------------------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if now - self._last_alive >= 1.0:
            self.client.set(alive_key(self.id), 1, ex=ALIVE_TTL)
            if now - self._last_alive > ALIVE_TTL:  # first, or after an outage: others may not have renewed yet
                self._steady_since = now
            self._last_alive = now
        self.guard(now)
        self.reap()
        if self.observe(now):
            delayed.release_due(self.client, self.publisher, time.time())
        if now - self._last_sweep >= 2.0:
            self._last_sweep = now
            recovery.recover(self.client, self.registry, self.is_dead)
            isolation.sweep()  # the private /tmp of a worker that died without removing it
            if self.adopt_orphans:
                watchdog.kill_orphans(self.worker_pids())
        self.pruner.step(now)  # RQ's registries and the dead letters kept within their bounds
        self.scale(now)
        self.publish_view(now)
        self.ticker.step()  # schedules' ticks now due, each published once across every scaler

    def short_of_workers(self, functions: Iterable[str]) -> bool:
        """Whether a step may have to start workers for ``functions`` (their sources just published):
        one of them has fewer workers here (not retiring) than
        ``clamp(queued + running, min_workers, max_concurrency)``.

        One round trip (none for a function with no worker here), where a step makes several: when
        an idle worker is there to take the event, the step waits for the next tick rather than
        compete with that worker for Redis and the CPU. Counting this scaler's workers only errs
        towards a step, which counts every scaler's.
        """
        names = [name for name in functions if name in self.views and name in self.registry]
        live = {name: sum(not p.retiring for p in self.views[name].workers.values()) for name in names}
        if not all(live.values()):
            return True
        if not names:
            return False
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                queue = self.queues[name]
                pipe.llen(queue.key)
                pipe.zcard(queue.started_job_registry.key)
            rows = pipe.execute(raise_on_error=False)
        for name, queued, running in zip(names, rows[0::2], rows[1::2], strict=True):
            if not (isinstance(queued, int) and isinstance(running, int)):
                return True  # a key of another type: the step repairs it
            fn = self.registry.get(name)
            if max(fn.min_workers, min(queued + running, fn.concurrency(self.settings.max_workers))) > live[name]:
                return True
        return False

    def guard(self, now: float) -> None:
        """Kill the tree of every worker that cannot enforce its invocation's limits (stopped or
        stuck past the deadline, stopped over the memory limit); :meth:`reap` settles its event."""
        procs = {p.pid: p for v in self.views.values() for p in v.workers.values()}
        limits = {pid: (fn.timeout, fn.memory) for pid, p in procs.items()
                  for fn in (self.forked.get(pid) or self.registry.get(p.fn),)}
        for pid, breach in self.watchdog.check(now, limits).items():
            self.breaches[procs[pid].name] = (breach.error_type, breach.detail)
            self.decide(procs[pid].fn, now, "kill", f"{procs[pid].name}: {breach.error_type}")
        if self.breaches:
            time.sleep(0.01)  # SIGKILL of a stopped process takes effect at once; collect it in this step

    def worker_pids(self) -> list[int]:
        return [pid for v in self.views.values() for pid in v.workers]

    def reap(self) -> None:
        """Collect exited workers; work of one that died mid-invocation is settled at once, and
        whatever its invocation left running is killed."""
        crashed = collected = False
        gone: list[str] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for view in self.views.values():
                proc = view.workers.pop(pid, None)
                if proc is None:
                    continue
                collected = True
                self.watchdog.forget(pid)
                self.forked.pop(pid, None)
                gone.append(proc.name)
                if status != 0:
                    crashed = True
                    log.warning("worker %s exited abnormally (status %d)", proc.name, status)
        if collected and self.adopt_orphans:
            watchdog.kill_orphans(self.worker_pids())
        if crashed:
            recovery.recover(self.client, self.registry, self.is_dead, self.breaches)
        for name in gone:
            self.breaches.pop(name, None)
        if collected:
            self.forget_removed()

    def forget_removed(self) -> None:
        """Drop what this scaler keeps of functions no longer in the registry, once their last
        worker is gone (what is queued for them stays in Redis, for status and the dead letters)."""
        removed = [name for name, view in self.views.items() if name not in self.registry and not view.workers]
        if not removed:
            return
        for name in removed:
            del self.views[name], self.queues[name]
            self.view_writer.forget(name)
        with self.client.pipeline(transaction=False) as pipe:
            for name in removed:
                pipe.hdel(slots.slots_key(name), self.id)
                pipe.hdel(stats.scaler_key(name), self.id)
            pipe.execute(raise_on_error=False)

    def is_dead(self, worker_name: str) -> bool:
        """Whether the worker that RQ names ``worker_name`` is gone.

        Ours: it is no longer among our workers. Another scaler's on this host (or one of an
        earlier run): its process is gone. Another host's: its RQ worker key expired, or its
        scaler's liveness key did (the host's lease: a host that died or was cut off for
        ``ALIVE_TTL`` seconds), judged only once this scaler has itself renewed its liveness for
        that long without a gap, so that after a Redis outage every scaler has had its turn to
        renew. A name that is not a lambdalite worker's (a plain RQ worker's, or a damaged one):
        its RQ worker key expired.
        """
        owner = processes.parse_worker_name(worker_name)
        if owner is None:
            return not self.client.exists(rqlayout.worker_key(worker_name))
        host, sid, pid = owner
        if host == self.host and sid == self.sid:
            return not any(pid in v.workers for v in self.views.values())
        if host == self.host:
            return not psutil.pid_exists(pid)
        if not self.client.exists(rqlayout.worker_key(worker_name)):
            return True
        steady = self._last_alive - self._steady_since >= ALIVE_TTL and self.clock() - self._last_alive < ALIVE_TTL
        return steady and not self.client.exists(alive_key(f"{host}.{sid}"))

    def observe(self, now: float) -> bool:
        """Read every worker's RQ state and job counts, and look for delayed events now due, in one
        round trip; returns whether some are due."""
        procs = [p for v in self.views.values() for p in v.workers.values()]
        *rows, due = connection.run(self.client, [
            *(("HMGET", rqlayout.worker_key(p.name), *rqlayout.WORKER_STATE_AND_COUNTS) for p in procs),
            delayed.probe(time.time()),
        ])
        for p, row in zip(procs, rows, strict=True):
            if isinstance(row, Exception) or row[0] is None:
                continue  # not registered yet (still starting), or its key is damaged: the worker repairs it
            state, ok, failed = row
            jobs = _count(ok) + _count(failed)
            busy = state == b"busy" or jobs != p.jobs_seen
            p.jobs_seen = jobs
            if busy:
                p.state, p.idle_since = "busy", None
            else:
                p.state = "idle"
                p.idle_since = p.idle_since if p.idle_since is not None else now
        return bool(due)  # an event, or an error that release_due repairs

    def scale(self, now: float) -> None:
        """Grow toward each function's desired count fairly; retire workers idle too long."""
        wants: dict[str, int] = {}
        active = 0
        functions = list(self.registry)
        counts = self.slots.census([(fn, self.queues[fn.name], len(self.views[fn.name].workers))
                                    for fn in functions])
        for fn, census in zip(functions, counts, strict=True):
            view = self.views[fn.name]
            queued, running, total = census.queued, census.running, census.workers
            # across every host: this host's part is bounded by its own cap in grow()
            desired = max(fn.min_workers, min(queued + running, slots.cluster_cap(fn)))
            active += desired > 0
            live = [p for p in view.workers.values() if not p.retiring]
            if desired > total:
                wants[fn.name] = desired - total
                reason = f"queued={queued} running={running} workers={total} desired={desired}"
                view.pending = reason
            idle_timeout = fn.idle_timeout or self.settings.idle_timeout
            keep = view.keep = max(fn.min_workers, desired)
            idle = sorted((p for p in live if p.state == "idle" and p.idle_since is not None
                           and now - p.idle_since >= idle_timeout), key=lambda p: p.idle_since or 0)
            for proc in idle[: max(0, len(live) - keep)]:
                self.retire(proc, now, f"idle for {now - (proc.idle_since or now):.1f}s")
        waiting = self.grow(wants, now)
        if waiting:
            self.rebalance(waiting, max(1, self.settings.max_workers // max(1, active)), now)
        self.quiet = active == 0 and not any(view.workers for view in self.views.values())

    @property
    def interval(self) -> float:
        """Seconds until the next step when nothing wakes the scaler."""
        return QUIET_STEP if self.quiet else STEP

    def rebalance(self, wants: dict[str, int], share: int, now: float) -> None:
        """At the host cap (or the memory budget), make room for functions that want workers.

        First, idle workers that their own function does not need stop at once, whatever their
        ``idle_timeout`` says. Then a function above its fair share gives one busy worker to one
        below it. Either way the worker stops warm (after its current invocation), and the next
        step hands the freed slot to the function that waits.
        """
        need = sum(wants.values())
        waiting = min(wants)
        for name, view in self.views.items():
            if name in wants:
                continue
            live = [p for p in view.workers.values() if not p.retiring]
            idle = sorted((p for p in live if p.state == "idle"), key=lambda p: p.idle_since or now)
            for proc in idle[: max(0, len(live) - view.keep)]:
                if need <= 0:
                    return
                self.retire(proc, now, f"idle, and {waiting} waits for a worker")
                need -= 1
        if need <= 0:
            return
        starved = [n for n in wants if len(self.views[n].workers) < share]
        if not starved:
            return
        counts = {n: [p for p in v.workers.values() if not p.retiring] for n, v in self.views.items()}
        donor = max(counts, key=lambda n: len(counts[n]))
        if len(counts[donor]) <= share or any(p.retiring for p in self.views[donor].workers.values()):
            return
        proc = min(counts[donor], key=lambda p: (p.state != "idle", p.started))
        self.retire(proc, now, f"fair share ({share}) for {starved[0]}")

    def grow(self, wants: dict[str, int], now: float) -> dict[str, int]:
        """Hand out new workers one at a time, to the function with the fewest first (fairness).

        Returns what is still wanted for lack of room on this host (its cap or memory budget).
        """
        blocked: dict[str, int] = {}
        mine = sum(len(v.workers) for v in self.views.values())
        while wants and mine < self.settings.max_workers:
            name = min(wants, key=lambda n: (len(self.views[n].workers), n))
            fn = self.registry.get(name)
            reason = self.views[name].pending
            if not self.memory_allows(fn):
                self.decide(name, now, "hold", f"memory budget: {reason}")
                blocked[name] = wants.pop(name)  # idle workers of others may make room
                continue
            if not self.slots.take(fn, self.queues[name], len(self.views[name].workers)).taken:
                self.decide(name, now, "hold", f"max_concurrency reached: {reason}")
                del wants[name]
                continue
            pid = self.spawn(fn)
            self.forked[pid] = fn
            wname = processes.worker_name(self.host, self.sid, fn.name, pid)
            self.views[name].workers[pid] = WorkerProc(pid, name, wname, now)
            self.decide(name, now, "scale-up", reason)
            mine += 1
            wants[name] -= 1
            if not wants[name]:
                del wants[name]
        return {**wants, **blocked}

    def memory_allows(self, fn: Function) -> bool:
        committed = sum((self.forked.get(p.pid) or self.registry.functions.get(p.fn, fn)).memory
                        for v in self.views.values() for p in v.workers.values())
        available = psutil.virtual_memory().available / MB
        return committed + fn.memory <= self.memory_budget_mb and fn.memory <= available

    def retire(self, proc: WorkerProc, now: float, reason: str) -> None:
        proc.retiring = True
        self.board.send(proc.pid, signal.SIGTERM)  # warm: the worker finishes what it runs, then exits
        self.decide(proc.fn, now, "scale-down", f"{proc.name} {reason}")

    def decide(self, fn: str, now: float, action: str, reason: str) -> None:
        self.view_writer.decide(self.views[fn], fn, action, reason)

    def publish_view(self, now: float) -> None:
        """Write this scaler's view of each function for ``status`` (see :mod:`workers.scaler_views`)."""
        self.view_writer.publish(self.views, now)

    # -- reloading ----------------------------------------------------------------------------------

    def apply(self, registry: Registry, changed: set[str]) -> None:
        """Run ``registry`` (a new revision) from now on: new functions get their view and queue,
        and the workers of functions removed or ``changed`` (definition or code) stop warm: each
        finishes the invocation it runs on its code and limits, and new invocations go to fresh
        workers forked with the new ones."""
        now = self.clock()
        gone = set(self.registry.functions) - set(registry.functions)
        self.registry.replace(registry)
        for fn in self.registry:
            if fn.name not in self.views:
                self.views[fn.name] = FunctionView()
                self.queues[fn.name] = function_queue(self.client, fn.name)
        number = registry.revision.number if registry.revision is not None else 0
        for name in sorted(changed | gone):
            view = self.views.get(name)
            why = "removed" if name in gone else f"changed in revision {number}"
            for proc in list(view.workers.values()) if view is not None else ():
                if not proc.retiring:
                    self.retire(proc, now, why)
        self.ticker.replace(self.registry)
        self.forget_removed()

    # -- stopping -----------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Warm-stop every worker; after ``grace`` s hand back what still runs; kill stragglers.

        With Redis gone (a stop of the whole stack after redis-server died), nothing running could
        record its outcome or be handed back, so the workers get a short grace; the next start
        settles what they held (see :mod:`workers.recovery`).
        """
        probe = connect(self.settings.redis_dsn, retries=0)
        try:
            probe.ping()
            reachable = True
        except TRANSIENT as e:
            reachable = False
            grace = min(grace, NO_REDIS_GRACE)
            log.warning("redis unavailable at the stop (%s): the next start settles what runs now", e)
        finally:
            probe.close()
        processes.stop({p.pid: p for v in self.views.values() for p in v.workers.values()}, grace,
                       send=self.board.send)
        for v in self.views.values():
            v.workers.clear()
        if not reachable:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for name in self.views:
                    pipe.hdel(slots.slots_key(name), self.id)
                    pipe.hdel(stats.scaler_key(name), self.id)
                pipe.delete(alive_key(self.id))
                pipe.execute()
            recovery.recover(self.client, self.registry, self.is_dead)
        except TRANSIENT:
            log.warning("redis unavailable during stop; the next start settles what is left")

    # -- workers ------------------------------------------------------------------------------------

    def _fork_worker(self, fn: Function) -> int:
        slot = self.board.reserve()
        try:
            pid = processes.fork(self.settings, self.registry, fn, self.handlers.get(fn.name), self.host, self.sid,
                                 slot)
        except BaseException:
            self.board.unreserve()
            raise
        self.board.assign(pid)
        return pid


def _count(raw: bytes | None) -> int:
    """A job count from a worker's RQ hash; anything that is not one counts as 0."""
    return int(raw) if raw is not None and raw.isdigit() else 0


if __name__ == "__main__":  # the scaler's process: workers.scaler_process
    from workers.scaler_process import run

    run()
