"""``--cluster SPEC`` and ``--cluster-option key=value``: which Dask cluster a run uses, opened and closed.

- ``local`` / ``local:N``: a ``LocalCluster`` of N worker processes on this machine (default: one per
  two cores), each given its share of the cores as threads (``protloc.distributed.worker`` gives them to
  torch and runs one shard at a time);
- ``tcp://HOST:PORT``: the scheduler of a cluster someone started (``dask scheduler`` / ``dask worker``);
- ``slurm``, ``pbs``, ``lsf``: dask-jobqueue submits worker jobs to the batch system (options below).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from protloc.errors import ProtlocError

INSTALL = "pip install 'protloc[dask]'"
JOBQUEUES = ("slurm", "pbs", "lsf")
# --cluster-option keys: the dask-jobqueue arguments users of a core facility need, named as they are there
# (job_extra = one #SBATCH/#PBS/#BSUB line each, repeatable), plus how many jobs to keep.
JOB_OPTIONS = ("cores", "memory", "walltime", "queue", "account", "job_extra", "processes", "local_directory",
               "interface", "python", "job_script_prologue", "log_directory", "jobs", "adaptive")
LOCAL_OPTIONS = ("threads", "memory")


def require_dask(jobqueue: bool = False) -> None:
    """One line naming the extra when Dask (or dask-jobqueue for a batch system) is missing."""
    try:
        import distributed  # noqa: F401

        if jobqueue:
            import dask_jobqueue  # noqa: F401
    except ImportError as exc:
        raise ProtlocError(f"--cluster needs {exc.name.replace('_', '-')}: {INSTALL}") from None


@dataclass
class ClusterSpec:
    kind: str  # local | address | slurm | pbs | lsf
    workers: int | None = None  # local: processes
    address: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        if self.kind == "local":
            return f"local:{self.workers}"
        return self.address if self.kind == "address" else self.kind


def parse_cluster(spec: str, options: list[str] | None = None) -> ClusterSpec:
    """``--cluster`` and the ``--cluster-option`` list, checked (a ProtlocError names what is wrong)."""
    text = spec.strip()
    parsed = _parse_options(options or [])
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise ProtlocError(f"--cluster local:N takes a positive number of workers, got {spec!r}")
        _refuse_unknown(parsed, LOCAL_OPTIONS, "local")
        workers = int(count) if count else max(1, (os.cpu_count() or 2) // 2)
        return ClusterSpec("local", workers=workers, options=parsed)
    if text.startswith(("tcp://", "tls://", "ucx://")):
        host, _, port = text.split("://", 1)[1].rpartition(":")
        if not host or not port.isdigit():
            raise ProtlocError(f"--cluster {spec}: a scheduler address is tcp://HOST:PORT")
        if parsed:
            raise ProtlocError("--cluster-option configures clusters protloc starts (local, slurm, pbs, lsf), "
                               "not an existing scheduler")
        return ClusterSpec("address", address=text)
    if text.lower() in JOBQUEUES:
        _refuse_unknown(parsed, JOB_OPTIONS, text.lower())
        if "jobs" in parsed and "adaptive" in parsed:
            raise ProtlocError("--cluster-option jobs=N and adaptive=MIN-MAX exclude each other")
        _jobs(parsed)  # checked now, not after the first job script was submitted
        return ClusterSpec(text.lower(), options=parsed)
    raise ProtlocError(f"unknown --cluster {spec!r}: local[:N], tcp://HOST:PORT, slurm, pbs or lsf")


def _parse_options(items: list[str]) -> dict:
    parsed: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ProtlocError(f"--cluster-option takes key=value, got {item!r}")
        if key == "job_extra":  # one directive line per option, in the order given
            parsed.setdefault(key, []).append(value.strip())
        else:
            parsed[key] = value.strip()
    return parsed


def _refuse_unknown(parsed: dict, allowed: tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(parsed) - set(allowed))
    if unknown:
        raise ProtlocError(f"--cluster-option {unknown[0]} does not apply to --cluster {kind} "
                           f"(choose from {', '.join(allowed)})")


def _positive(value: str, name: str) -> int:
    if not str(value).isdigit() or int(value) < 1:
        raise ProtlocError(f"--cluster-option {name} must be a positive integer, got {value!r}")
    return int(value)


def _jobs(parsed: dict) -> tuple[str, int, int]:
    """('fixed', n, n) or ('adaptive', min, max)."""
    if "adaptive" in parsed:
        low, sep, high = parsed["adaptive"].partition("-")
        if not sep:
            raise ProtlocError(f"--cluster-option adaptive takes MIN-MAX jobs, got {parsed['adaptive']!r}")
        low_n = 0 if low.strip() == "0" else _positive(low.strip(), "adaptive minimum")
        high_n = _positive(high.strip(), "adaptive maximum")
        if low_n > high_n:
            raise ProtlocError(f"--cluster-option adaptive={parsed['adaptive']}: the minimum exceeds the maximum")
        return "adaptive", low_n, high_n
    n = _positive(parsed.get("jobs", "1"), "jobs")
    return "fixed", n, n


def jobqueue_cluster(spec: ClusterSpec):
    """The dask-jobqueue cluster object (submits nothing until scaled): its ``job_script()`` is what
    each worker job runs."""
    require_dask(jobqueue=True)
    import dask_jobqueue

    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "lsf": dask_jobqueue.LSFCluster}
    options = dict(spec.options)
    options.pop("jobs", None)
    options.pop("adaptive", None)
    kwargs: dict = {}
    cores = _positive(options.pop("cores", "1"), "cores")
    processes = _positive(options.pop("processes", "1"), "processes")
    if cores % processes:
        raise ProtlocError(f"--cluster-option cores={cores} is not divisible by processes={processes}")
    kwargs.update(cores=cores, processes=processes, memory=options.pop("memory", "4GB"))
    if "job_extra" in options:
        kwargs["job_extra_directives"] = options.pop("job_extra")
    if "job_script_prologue" in options:
        kwargs["job_script_prologue"] = [options.pop("job_script_prologue")]
    if "account" in options:  # LSF calls it the project (#BSUB -P)
        kwargs["project" if spec.kind == "lsf" else "account"] = options.pop("account")
    for key in ("walltime", "queue", "local_directory", "interface", "python", "log_directory"):
        if key in options:
            kwargs[key] = options.pop(key)
    kwargs.setdefault("walltime", "01:00:00")
    if spec.kind == "lsf" and kwargs["walltime"].count(":") == 2:  # bsub -W takes [HH:]MM: seconds dropped
        kwargs["walltime"] = kwargs["walltime"].rsplit(":", 1)[0]
    # one worker process per job owns the job's cores: protloc gives them to torch (one shard at a time)
    return classes[spec.kind](**kwargs)


def start_local(spec: ClusterSpec):
    """(LocalCluster, threads per worker): N worker processes on loopback sharing this machine's cores."""
    from distributed import LocalCluster

    threads = spec.options.get("threads")
    threads = _positive(threads, "threads") if threads else max(1, (os.cpu_count() or 1) // spec.workers)
    kwargs = {"memory_limit": spec.options["memory"]} if "memory" in spec.options else {}
    cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=threads, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0", **kwargs)
    return cluster, threads


@contextmanager
def open_client(spec: ClusterSpec):
    """(client, description) for the run; a cluster protloc started is closed afterwards, a scheduler
    given by address is only disconnected from."""
    require_dask(jobqueue=spec.kind in JOBQUEUES)
    from distributed import Client

    cluster = None
    try:
        if spec.kind == "address":
            try:
                client = Client(spec.address, timeout="20s")
            except OSError as exc:
                raise ProtlocError(f"cannot reach the Dask scheduler at {spec.address}: {exc}") from None
            description = f"the scheduler at {spec.address}"
        elif spec.kind == "local":
            cluster, threads = start_local(spec)
            client = Client(cluster)
            description = f"a local cluster of {spec.workers} worker process(es), {threads} thread(s) each"
        else:
            cluster = jobqueue_cluster(spec)
            mode, low, high = _jobs(spec.options)
            if mode == "adaptive":
                cluster.adapt(minimum_jobs=low, maximum_jobs=high)
            else:
                cluster.scale(jobs=low)
            client = Client(cluster)
            description = f"{spec.kind} jobs ({mode} {low}-{high})" if mode == "adaptive" else f"{low} {spec.kind} job(s)"
        try:
            yield client, description
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
