"""Where the per-identity build runs: the engines of `synfiqa build --engine local|ray`.

An engine is handed the identities left to build and yields `(identity, record)` as each one
is finished. It decides only *where* `Pipeline.build_identity` runs; everything around it
(Stage 1, the filters, the records and resume, the dataset-wide step) stays with the driver in
core/stages/build.py and is the same code for every engine, so a Ray build writes the same
bytes as a local one.

* `LocalEngine`: in this process, identity after identity.
* `RayEngine`: Ray actors, one per `gpus_per_worker` GPUs of the cluster (or one per CPU in a
  cluster without GPUs). Each builds its own `Pipeline` once (the models are loaded once per
  worker) and then builds identity after identity. A worker that dies is restarted by Ray and
  its identity built again from scratch (`max_restarts`, `max_task_retries`; an identity is
  seeded and written atomically, so a second attempt writes the same bytes); a worker past its
  restarts is dropped and its identity handed to another. The records are written by the
  driver, so an interrupted Ray build resumes like a local one, with either engine.

A build's bytes depend on torch's thread count (tests/test_build_outputs_unchanged.py): every
Ray worker runs with the driver's count, so `--engine ray` equals `--engine local` run with the
same count (set it for both with OMP_NUM_THREADS).
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from synfiqa.errors import ConfigError, EngineError, SynfiqaError
from synfiqa.timing import StageTimer

ENGINES = ("local", "ray")
RAY_MISSING = 'the ray engine needs Ray, which is not installed: pip install "synfiqa[ray]"'
# synfiqa's own environment (which plugins load, where weights are) reaches every worker as
# the driver has it, so workers build with the driver's components
FORWARDED_ENVIRONMENT = ("SYNFIQA_DISABLE_PLUGINS", "SYNFIQA_PLUGINS", "SYNFIQA_WEIGHTS")


@dataclass
class WorkerStats:
    """What one worker did, for the summary."""

    worker: int
    node: str = ""
    gpu_ids: list = field(default_factory=list)   # every GPU id its process (or a restart of it) saw
    pids: list = field(default_factory=list)
    identities: int = 0
    busy_s: float = 0.0
    lost: bool = False

    def as_dict(self) -> dict:
        return dict(vars(self))


class LocalEngine:
    """Every identity in this process, one after another."""

    name = "local"

    def __init__(self):
        self._stats = WorkerStats(0, node="local", pids=[os.getpid()])
        self._seconds = 0.0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, pipeline, out: Path, identities: list) -> Iterator[tuple[object, dict]]:
        started = time.perf_counter()
        try:
            for identity in identities:
                began = time.perf_counter()
                record = pipeline.build_identity(identity, out)
                self._stats.identities += 1
                self._stats.busy_s += time.perf_counter() - began
                yield identity, record
        finally:
            self._seconds = time.perf_counter() - started

    def report(self) -> dict:
        return _report(self.name, [self._stats], self._seconds, startup_s=0.0, retried=[])


class RayEngine:
    """The identities spread over Ray actors; see the module's docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_worker: float = 1.0, *, max_restarts: int = 3,
                 max_task_retries: int = 3, threads: int | None = None, echo=print,
                 testing_exit_once: tuple[str, str] | None = None):
        if gpus_per_worker <= 0:
            raise ConfigError(f"--gpus-per-worker must be above 0, got {gpus_per_worker}")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.max_restarts, self.max_task_retries = max_restarts, max_task_retries
        self.threads = threads
        self.echo = echo
        # testing only, (identity, marker file): the first worker to build that identity exits
        # (os._exit) after writing its files, before returning its record, as a lost GPU job
        # would; the marker, made on the way out, keeps a retry from exiting again
        self.testing_exit_once = testing_exit_once
        self._started_ray = False
        self._stats: list[WorkerStats] = []
        self._retried: list[str] = []
        self._startup_s = 0.0
        self._seconds = 0.0

    # -------------------------------------------------------------- the cluster

    def open(self) -> None:
        """Join the cluster at `address` ("auto": the one `ray start` runs on this machine); with
        none, Ray joins the cluster running on this machine or else starts one here (and `close`
        stops it). A cluster this process already joined is used as it is."""
        import ray

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing is sent home unless asked
        _check_reachable(self.address)
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"at {self.address!r}" if self.address else "on this machine"
            raise EngineError(f"cannot reach a Ray cluster {where}: {str(error).splitlines()[0]} "
                              "(start one with `ray start --head`, or leave out --ray-address)") from None
        self._started_ray = True

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def slots(self) -> tuple[int, dict]:
        """How many workers the cluster holds, and the resources of each."""
        import ray

        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if gpus > 0:
            count = int(gpus // self.gpus_per_worker + 1e-9)
            if count == 0:
                raise EngineError(f"--gpus-per-worker {self.gpus_per_worker} is more than the cluster's {gpus:g} GPUs")
            return count, {"num_gpus": self.gpus_per_worker, "num_cpus": min(1.0, cpus / count)}
        if cpus < 1:
            raise EngineError("the Ray cluster has no GPU and no CPU to run a worker on")
        return int(cpus), {"num_gpus": 0, "num_cpus": 1}

    # -------------------------------------------------------------- the build

    def run(self, pipeline, out: Path, identities: list) -> Iterator[tuple[object, dict]]:
        import ray
        import torch

        pending = deque(identities)
        if not pending:
            return
        count, resources = self.slots()
        count = min(count, len(pending))
        threads = self.threads or torch.get_num_threads()
        environment = {name: os.environ[name] for name in FORWARDED_ENVIRONMENT if name in os.environ}
        actor = ray.remote(IdentityWorker).options(
            max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
            runtime_env={"env_vars": environment} if environment else None, **resources)
        started = time.perf_counter()
        workers = [actor.remote(pipeline.config, str(out), threads, self.testing_exit_once) for _ in range(count)]
        try:
            self._stats = [WorkerStats(i) for i in range(count)]
            for stats, info in zip(self._stats, self._ready(workers)):
                self._check_components(info, pipeline.plugins)
                stats.node, stats.pids, stats.gpu_ids = info["node"], [info["pid"]], list(info["gpu_ids"])
                _merge_timing(pipeline.timer, info["timing"])
            self._startup_s = time.perf_counter() - started
            per_gpu = f"{resources['num_gpus']:g} GPU each" if resources["num_gpus"] else "no GPU"
            each = f"{threads} torch thread{'s' if threads != 1 else ''} each"
            self.echo(f"ray: {count} workers ({per_gpu}, {each}) ready in {self._startup_s:.1f} s")
            yield from self._dispatch(workers, pending, pipeline.timer)
        finally:
            for worker in workers:
                ray.kill(worker, no_restart=True)
            self._seconds = time.perf_counter() - started - self._startup_s

    @staticmethod
    def _ready(workers) -> list[dict]:
        """Each worker's description once its Pipeline is built; a worker that could not build
        it (a weights file missing on its node, ...) stops the build with that worker's reason."""
        import ray

        infos = ray.get([worker.describe.remote() for worker in workers])
        for info in infos:
            if info["failure"]:
                raise EngineError(f"a Ray worker on {info['node']} could not start: {info['failure']}")
        return infos

    @staticmethod
    def _check_components(info: dict, plugins: dict) -> None:
        if info["plugins"] != plugins:
            theirs = info["plugins"]
            differ = "; ".join(f"{kind}: {theirs.get(kind)} there, {plugins[kind]} here"
                               for kind in sorted(plugins) if theirs.get(kind) != plugins[kind])
            raise EngineError(f"the Ray worker on {info['node']} loads other components than this driver "
                              f"({differ}); install the same synfiqa and plugins on every node")

    def _dispatch(self, workers, pending: deque, timer: StageTimer):
        """One identity in flight per worker; results in the order they finish."""
        import ray

        idle = list(range(len(workers)))
        in_flight = {}
        while pending or in_flight:
            while pending and idle:
                index, identity = idle.pop(0), pending.popleft()
                in_flight[workers[index].build.remote(identity)] = (index, identity)
            if not in_flight:
                raise EngineError(f"every Ray worker was lost ({len(pending)} identities not built); the "
                                  "identities built so far are kept: run the same command again to resume")
            (done,), _ = ray.wait(list(in_flight), num_returns=1)
            index, identity = in_flight.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayActorError:
                # Ray restarted the worker and retried as often as allowed: drop it, and build
                # the identity again from scratch on another worker
                self._stats[index].lost = True
                self._retried.append(identity.name)
                pending.appendleft(identity)
                self.echo(f"ray: worker {index} lost while building {identity.name}; it goes to another worker")
                continue
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, SynfiqaError):  # one line, as the local engine shows it
                    raise error.cause from None
                raise
            stats = self._stats[index]
            stats.identities += 1
            stats.busy_s += result["seconds"]
            for gpu in result["gpu_ids"]:
                if gpu not in stats.gpu_ids:
                    stats.gpu_ids.append(gpu)
            if result["pid"] not in stats.pids:
                stats.pids.append(result["pid"])
            _merge_timing(timer, result["timing"])
            idle.append(index)
            yield identity, result["record"]

    def report(self) -> dict:
        return _report(self.name, self._stats, self._seconds, self._startup_s, self._retried)


class IdentityWorker:
    """A Ray actor: the build's Pipeline, made once with the driver's config, then one identity
    per call through the same `Pipeline.build_identity` as the local engine."""

    def __init__(self, config: dict, out: str, threads: int, testing_exit_once: tuple[str, str] | None = None):
        import torch

        torch.set_num_threads(threads)  # a build's bytes depend on it: the driver's count on every worker
        from synfiqa.stages.build import Pipeline

        self.timer = StageTimer()
        self.failure = None
        try:
            with self.timer("load models"):
                self.pipeline = Pipeline(config, timer=self.timer)
        except SynfiqaError as error:  # told to the driver by `describe`, in one line (Ray keeps only text)
            self.failure, self.pipeline = str(error), None
        self.out = Path(out)
        self.testing_exit_once = testing_exit_once

    def describe(self) -> dict:
        import ray

        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(), "gpu_ids": _gpu_ids(),
                "failure": self.failure, "plugins": self.pipeline.plugins if self.pipeline else None,
                "timing": self.timer.as_dict()}

    def build(self, identity) -> dict:
        self.timer = self.pipeline.timer = StageTimer()  # this identity's stages only
        started = time.perf_counter()
        record = self.pipeline.build_identity(identity, self.out)
        if self.testing_exit_once and identity.name == self.testing_exit_once[0]:
            try:
                os.close(os.open(self.testing_exit_once[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return {"record": record, "timing": self.timer.as_dict(), "seconds": time.perf_counter() - started,
                "pid": os.getpid(), "gpu_ids": _gpu_ids()}


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT where nothing listens is one line here: Ray itself would retry for ever."""
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except ValueError:
        raise EngineError(f"--ray-address must be auto or HOST:PORT, got {address!r}") from None
    except OSError as error:
        raise EngineError(f"cannot reach a Ray cluster at {address!r}: {error.strerror or error} (start one with "
                          "`ray start --head`, or leave out --ray-address)") from None


def _gpu_ids() -> list:
    import ray

    return [str(gpu) for gpu in ray.get_gpu_ids()]


def _merge_timing(timer: StageTimer, timing: dict) -> None:
    for stage, values in timing.items():
        timer.add(stage, values["wall_s"], values["cpu_s"], values["calls"])


def _report(name: str, stats: list[WorkerStats], seconds: float, startup_s: float, retried: list[str]) -> dict:
    built = sum(s.identities for s in stats)
    return {"engine": name, "identities": built, "seconds": seconds, "startup_s": startup_s,
            "identities_per_s": built / seconds if seconds > 0 else 0.0,
            "workers": [s.as_dict() for s in stats], "retried": list(retried)}


def report_lines(report: dict) -> list[str]:
    """The engine's part of the end-of-build summary (nothing when every identity was built before)."""
    if not report["identities"] and not report["retried"]:
        return []
    lines = [f"engine {report['engine']}: {report['identities']} identities in {report['seconds']:.1f} s "
             f"({report['identities_per_s']:.2f} identities/s"
             + (f"; workers started in {report['startup_s']:.1f} s)" if report["engine"] != "local" else ")")]
    if report["engine"] != "local":
        for worker in report["workers"]:
            gpus = f"GPU {','.join(worker['gpu_ids'])}" if worker["gpu_ids"] else "no GPU"
            restarts = f", restarted {len(worker['pids']) - 1}x" if len(worker["pids"]) > 1 else ""
            lost = ", lost" if worker["lost"] else ""
            lines.append(f"  worker {worker['worker']}: {worker['node']}, {gpus}: {worker['identities']} identities, "
                         f"{worker['busy_s']:.1f} s building{restarts}{lost}")
        if report["retried"]:
            lines.append(f"  built again on another worker: {', '.join(report['retried'])}")
    return lines


def make_engine(name: str, *, address: str | None = None, gpus_per_worker: float | None = None, echo=print):
    """The engine of `--engine`; Ray's options are refused with the local engine."""
    if name == "local":
        given = [flag for flag, value in (("--ray-address", address), ("--gpus-per-worker", gpus_per_worker))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --engine ray only")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address, 1.0 if gpus_per_worker is None else gpus_per_worker, echo=echo)
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
