"""`protloc worker`: a prediction worker in its own process, on this or any other machine.

It claims submissions from the platform's database (leases, so a worker that dies gives its jobs
back), reads their uploads from the shared data folder and writes the probabilities back; pictures
are drawn when it has nothing else to do. Run `protloc serve --no-worker` for the pages and the API.
"""

from __future__ import annotations

import logging
import signal
import sys

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a prediction worker that takes submissions from the platform's database",
        description="Take submissions from the database of `protloc serve` (PostgreSQL for several machines; "
        "SQLite on one machine), predict them and store their probabilities. Start as many as you like, on "
        "any machines that reach the database and the data folder; each submission is done exactly once.",
    )
    parser.add_argument("--db", dest="database_url", required=True, metavar="URL",
                        help="the server's database, e.g. postgresql+psycopg://protloc@dbhost/protloc")
    parser.add_argument("--data-dir", default="protloc-data",
                        help="the server's data folder (uploads, pictures), shared by every machine (default: %(default)s)")
    parser.add_argument("--model", action="append", dest="models", metavar="pretrained|RUN_DIR|FILE",
                        help="the models of the server, in the same order (their keys must match). Default: pretrained")
    parser.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                        help="how long a claimed submission stays this worker's without renewal; a dead worker's "
                        "jobs go to another after this (default: %(default)s)")
    parser.add_argument("--poll", type=float, default=0.5, metavar="SECONDS",
                        help="how often an idle worker looks for new submissions (default: %(default)s)")
    parser.add_argument("--max-batch-patches", type=int, default=64, help="patches per forward pass (default: %(default)s)")
    parser.add_argument("--no-cells", action="store_true",
                        help="do not segment the cells of each sample (by default: cells and their probabilities "
                        "are stored with the sample's, GapNet-PL models only)")
    parser.add_argument("--lanes", type=int, default=2, metavar="N",
                        help="threads taking submissions side by side (default: %(default)s)")
    add_device_argument(parser)
    from protloc.commands.options import add_precision_argument

    add_precision_argument(parser, default="auto")
    from protloc.data.limits import add_max_pixels_argument

    add_max_pixels_argument(parser)  # give the server's --max-pixels: stored samples are decoded again here
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from protloc.errors import ProtlocError
    from protloc.web.storage import db
    from protloc.web.queue.jobs import DatabaseJobs
    from protloc.web.settings import load_predictors
    from protloc.web.storage.store import BlobStore
    from protloc.web.queue.worker import PredictionWorker

    if args.lease <= 0 or args.poll <= 0 or args.max_batch_patches <= 0 or args.lanes <= 0:
        raise ProtlocError("--lease, --poll, --max-batch-patches and --lanes must be positive")
    from protloc.commands.serve import check_platform_precision

    check_platform_precision(args.precision, not args.no_cells)
    data_dir = Path(args.data_dir)
    if not (data_dir / "blobs").is_dir():
        raise ProtlocError(f"{data_dir} is not a protloc data folder (no blobs/ in it); give the server's --data-dir")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sessions = db.open_database(args.database_url)
    except Exception as exc:  # an unreachable server, a driver not installed, a malformed URL
        raise ProtlocError(f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    predictors = load_predictors(list(args.models or ["pretrained"]), args.device, args.precision)
    jobs = DatabaseJobs(sessions, "", lease_seconds=args.lease, poll_seconds=args.poll)
    worker = PredictionWorker(predictors, sessions, BlobStore(data_dir), max_batch_patches=args.max_batch_patches,
                              jobs=jobs, cells=not args.no_cells, lanes=args.lanes,
                              max_pixels=args.max_pixels)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(timeout=0))
    print(f"protloc worker {worker.name}: models {', '.join(predictors)}, database {sessions.kw['bind'].url!r}, "
          f"data in {data_dir}, lease {args.lease:g} s", file=sys.stderr, flush=True)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        worker.stop()
    return 0
