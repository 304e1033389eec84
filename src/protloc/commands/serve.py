"""`protloc serve`: the web platform and HTTP API (FastAPI under uvicorn)."""

from __future__ import annotations

import os
import sys

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the web platform: upload HTI images, get them annotated",
        description="Serve the upload/result/history pages and the HTTP API (/api/v1, OpenAPI at /docs). "
        "Submissions and results live in a database (SQLite file in --data-dir by default), uploaded "
        "images on disk under content-addressed names.",
    )
    parser.add_argument("--model", action="append", dest="models", metavar="pretrained|RUN_DIR|FILE",
                        help="a model to offer; repeat for several (the user picks one per submission). "
                        "Default: pretrained")
    parser.add_argument("--db", dest="database_url", metavar="URL",
                        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/protloc "
                        "(default: sqlite file protloc.db in --data-dir)")
    parser.add_argument("--data-dir", default="protloc-data", help="folder for uploads and rendered images (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--auth-token", action="append", dest="auth_tokens", metavar="TOKEN",
                        help="require this bearer token (repeatable; tokens from the database's tokens table work too). "
                        "Also read from PROTLOC_AUTH_TOKEN")
    parser.add_argument("--require-auth", action="store_true",
                        help="require a token from the tokens table even without --auth-token")
    parser.add_argument("--create-user", metavar="NAME",
                        help="add user NAME to the database, print their token and exit. A user sees only their own "
                        "submissions and batches; a server whose database holds users requires tokens")
    parser.add_argument("--admin", action="store_true", help="with --create-user: the user sees everyone's submissions")
    parser.add_argument("--create-token", metavar="NAME",
                        help="print another token for user NAME (a new non-admin user if there is none) and exit")
    parser.add_argument("--revoke-user", metavar="NAME",
                        help="revoke every token of user NAME (they can no longer sign in) and exit")
    parser.add_argument("--max-upload-mb", type=float, default=512, help="upload limit per sample in MB (default: %(default)s)")
    parser.add_argument("--max-batch-mb", type=float, default=8192,
                        help="limit for a batch zip and its uncompressed contents in MB (default: %(default)s)")
    from protloc.data.limits import add_max_pixels_argument

    add_max_pixels_argument(parser)
    parser.add_argument("--expert-study", metavar="STUDY",
                        help="also serve the annotation pages of this expert study at /expert/")
    parser.add_argument("--client-timeout", type=float, default=30, metavar="SECONDS",
                        help="close a connection whose client sends nothing for this long in the middle of a request "
                        "(idle keep-alive connections close after 5 s; default: %(default)s)")
    parser.add_argument("--no-worker", action="store_true",
                        help="serve pages and API only; `protloc worker --db URL` processes (on this or other machines) "
                        "predict the submissions")
    parser.add_argument("--no-cells", action="store_true",
                        help="do not segment the cells of each sample (by default this server's worker finds them "
                        "and predicts each, GapNet-PL models only, needs the cells extra)")
    parser.add_argument("--lanes", type=int, default=2, metavar="N",
                        help="worker threads taking submissions side by side: one's forward pass overlaps another's "
                        "segmentation and bookkeeping (default: %(default)s)")
    parser.add_argument("--render-eagerly", action="store_true",
                        help="draw every full-size picture before a submission is done (the platform before "
                        "probabilities-first; slower, kept for comparison)")
    parser.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                        help="PostgreSQL: how long this server's worker holds a claimed submission without renewal "
                        "(default: %(default)s)")
    add_device_argument(parser)
    from protloc.commands.options import add_precision_argument

    add_precision_argument(parser, default="auto")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=run)


def check_platform_precision(precision: str, cells: bool) -> None:
    """int8 gives image-level answers only: a platform that finds cells cannot run it."""
    from protloc.errors import ProtlocError

    if precision == "int8" and cells:
        raise ProtlocError("--precision int8 has no feature maps for the cells: add --no-cells, or use auto/bf16/fp32")


def settings_from_args(args):
    from pathlib import Path

    from protloc.errors import ProtlocError
    from protloc.web.settings import MB, WebSettings

    from protloc.data.limits import DEFAULT_MAX_PIXELS

    pixel_limit = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if (args.max_upload_mb <= 0 or args.max_batch_mb <= 0 or pixel_limit <= 0 or args.client_timeout <= 0
            or args.lease <= 0 or args.lanes <= 0):
        raise ProtlocError("--max-upload-mb, --max-batch-mb, --max-pixels, --client-timeout, --lease and --lanes "
                           "must be positive")
    check_platform_precision(args.precision, not args.no_cells)
    tokens = list(args.auth_tokens or [])
    if os.environ.get("PROTLOC_AUTH_TOKEN"):
        tokens.append(os.environ["PROTLOC_AUTH_TOKEN"])
    return WebSettings(
        models=list(args.models or ["pretrained"]),
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        auth_tokens=tokens,
        require_auth=args.require_auth,
        max_upload_bytes=int(args.max_upload_mb * MB),
        max_batch_bytes=int(args.max_batch_mb * MB),
        max_pixels=pixel_limit,
        device=args.device,
        expert_study=Path(args.expert_study) if args.expert_study else None,
        run_worker=not args.no_worker,
        eager_render=args.render_eagerly,
        lease_seconds=args.lease,
        cells=not args.no_cells,
        lanes=args.lanes,
        precision=args.precision,
    )


def run(args) -> int:
    from protloc.errors import ProtlocError
    from protloc.web.storage import db
    from protloc.web.http.app import create_app

    settings = settings_from_args(args)
    if args.admin and not args.create_user:
        raise ProtlocError("--admin goes with --create-user NAME")
    if args.create_user or args.revoke_user:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        sessions = db.open_database(settings.resolved_database_url())
        if args.create_user:
            print(db.create_user(sessions, args.create_user, admin=args.admin))
        else:
            count = db.revoke_user(sessions, args.revoke_user)
            print(f"revoked {count} token(s) of {args.revoke_user}", file=sys.stderr)
        return 0
    # Pillow's own decompression-bomb guard, process-wide, as a second line behind the header checks
    # made before any upload is decoded (it errors above twice this many pixels).
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    if args.create_token:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        sessions = db.open_database(settings.resolved_database_url())
        print(db.create_token(sessions, args.create_token))
        return 0
    try:
        app = create_app(settings)
    except ProtlocError:
        raise
    except Exception as exc:  # a database URL that cannot be reached, a driver not installed
        raise ProtlocError(f"cannot start the server: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    auth = "on" if app.state.platform.auth_required else "off (no --auth-token, no users)"
    worker = "no worker: `protloc worker` processes predict" if args.no_worker else "worker in this process"
    print(f"protloc: serving {', '.join(app.state.platform.predictors)} on http://{args.host}:{args.port}/ "
          f"(data in {settings.data_dir}, auth {auth}, {worker})", file=sys.stderr)
    from protloc.web.http.server import serve

    serve(app, args.host, args.port, args.log_level, args.client_timeout)
    return 0
