"""Prediction and single cells over a Dask cluster (``--cluster``; the ``protloc[dask]`` extra).

The narrow interface the commands use:

- ``add_cluster_arguments(parser)``: ``--cluster``, ``--cluster-option``, ``--shard-size``;
- ``cluster_spec(args)``: the checked ``ClusterSpec`` or None (the single-process path);
- ``predict(spec, ...)`` / ``cells(spec, ...)`` (``protloc.distributed.runner``): the run, returning what
  ``protloc.inference.batch.run_batch_prediction`` / ``protloc.cells.pipeline.run_cells`` return.

Modules: ``clusters`` (which cluster), ``shards`` (the plan and the resumable parts folder), ``worker`` and
``cells_task`` (what runs on a worker), ``merge`` (parts to the output with the single-process writers),
``inputs`` (what workers can read). Importing this package does not import Dask.
"""

from __future__ import annotations

from protloc.distributed.clusters import ClusterSpec, parse_cluster

__all__ = ["ClusterSpec", "add_cluster_arguments", "cluster_spec", "cells", "parse_cluster", "predict"]


def add_cluster_arguments(parser) -> None:
    group = parser.add_argument_group("on a Dask cluster (pip install 'protloc[dask]'; docs/cluster.md)")
    group.add_argument("--cluster", metavar="SPEC",
                       help="run the images in shards on a Dask cluster: local[:N] (N worker processes here), "
                       "tcp://HOST:PORT (a running scheduler), slurm, pbs or lsf (worker jobs via dask-jobqueue); "
                       "an interrupted run resumes from its finished shards")
    group.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                       help="slurm/pbs/lsf: cores, memory, walltime, queue, account, job_extra (repeatable), "
                       "processes, jobs=N or adaptive=MIN-MAX; local: threads, memory")
    group.add_argument("--shard-size", type=int, metavar="N",
                       help="images per shard (default: from the first image's size, 16 fields of 2048²)")


def cluster_spec(args) -> ClusterSpec | None:
    from protloc.errors import ProtlocError

    if not args.cluster:
        if args.cluster_option or args.shard_size is not None:
            raise ProtlocError(f"{'--cluster-option' if args.cluster_option else '--shard-size'} needs --cluster")
        return None
    if args.shard_size is not None and args.shard_size < 1:
        raise ProtlocError(f"--shard-size must be a positive integer, got {args.shard_size}")
    spec = parse_cluster(args.cluster, args.cluster_option)
    from protloc.distributed.clusters import JOBQUEUES, require_dask

    require_dask(jobqueue=spec.kind in JOBQUEUES)
    return spec


def predict(spec, inputs, model, out, **kwargs):
    from protloc.distributed.runner import predict as run

    return run(spec, inputs, model, out, **kwargs)


def cells(spec, inputs, model, out, **kwargs):
    from protloc.distributed.runner import cells as run

    return run(spec, inputs, model, out, **kwargs)
