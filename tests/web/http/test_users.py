"""Users and ownership: every route of the application, taken from its own route table, is tried with
no token, a wrong token, a revoked token, another user's token, the owner's and an admin's."""

from __future__ import annotations

import io
import zipfile

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

import protloc
from protloc.cli import main
from protloc.web.settings import WebSettings

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, upload_channels, wait_done, write_channel_files

OPEN = {"/health"}
MOUNT_FILES = {"/static": "/static/app.js", "/docs-assets": "/docs-assets/swagger-ui.css"}
LISTS = {"/api/v1/predictions", "/api/v1/predictions/export.csv", "/history"}


def all_routes(routes):
    """The application's routes; newer FastAPI keeps an included router as one entry (ours have no prefix)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes)
        else:
            yield route


def cli_token(capsys, data_dir, *args) -> str:
    assert main(["serve", "--data-dir", str(data_dir), *args]) == 0
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("users")
    data_dir = folder / "data"
    predictors = {"tiny": protloc.load_model(make_model_file(folder / "tiny.pt"))}
    return {"folder": folder, "data_dir": data_dir, "predictors": predictors}


def test_users_see_their_own_and_every_route_checks_the_token(world, capsys, tmp_path):
    data_dir = world["data_dir"]
    tokens = {name: cli_token(capsys, data_dir, "--create-user", name) for name in ("alice", "bob", "carol")}
    tokens["root"] = cli_token(capsys, data_dir, "--create-user", "root", "--admin")
    assert main(["serve", "--data-dir", str(data_dir), "--create-user", "alice"]) == 2
    assert "user 'alice' exists" in capsys.readouterr().err
    assert len(set(tokens.values())) == 4

    # No --auth-token, no --require-auth: the users in the database are enough to require tokens.
    with LiveServer(WebSettings(predictors=world["predictors"], data_dir=data_dir)) as live:
        def client(name=None, token=None):
            token = token or (tokens[name] if name else None)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.Client(base_url=live.url, timeout=60, headers=headers, follow_redirects=False)

        with client("alice") as alice:
            mine = upload_channels(alice, write_channel_files(tmp_path / "a", "alicecell", cell_like_sample(64, 64))).json()["id"]
            assert wait_done(alice, mine)["status"] == "done"
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as zf:
                for path in write_channel_files(tmp_path / "z", "alicewell", cell_like_sample(64, 64, seed=2)):
                    zf.write(path, path.name)
            batch = alice.post("/api/v1/batches", files={"file": ("b.zip", archive.getvalue())}).json()["id"]
        with client("bob") as bob:
            theirs = upload_channels(bob, write_channel_files(tmp_path / "b", "bobcell", cell_like_sample(64, 64, seed=3))).json()["id"]
            assert wait_done(bob, theirs)["status"] == "done"
        with client("carol") as carol:
            assert carol.get("/api/v1/models").status_code == 200
        assert main(["serve", "--data-dir", str(data_dir), "--revoke-user", "carol"]) == 0
        assert "revoked 1 token(s) of carol" in capsys.readouterr().err

        values = {"submission_id": mine, "batch_id": batch, "name": "composite.png"}
        tried = 0
        routes = list(all_routes(live.app.routes))
        for route in routes:
            if isinstance(route, Mount):
                assert route.path in MOUNT_FILES, f"new mount {route.path}: give a file under it in MOUNT_FILES"
                requests = [("GET", MOUNT_FILES[route.path], set())]
            else:
                assert isinstance(route, (APIRoute, Route)), route
                params = set(route.param_convertors)
                assert params <= set(values), f"{route.path}: give a value for {params - set(values)}"
                path = route.path.format(**{k: values[k] for k in params})
                requests = [(method, path, params) for method in sorted(route.methods - {"HEAD"})]
            tried += 1
            for method, path, params in requests:
                where = f"{method} {path}"
                if path in OPEN:
                    with client() as anonymous:
                        assert anonymous.request(method, path).status_code == 200, where
                    continue
                for who in (None, "wrong-token", tokens["carol"]):
                    with client(token=who) as stranger:
                        answer = stranger.request(method, path)
                        assert answer.status_code == 401, (where, who, answer.status_code)
                        assert "token" in answer.json()["detail"]
                with client("alice") as alice, client("bob") as bob, client("root") as root:
                    own, other, admin = (c.request(method, path) for c in (alice, bob, root))
                    if method == "POST":  # past the token check: the empty body is what is refused
                        assert own.status_code == other.status_code == 400, where
                    elif params & {"submission_id", "batch_id"}:
                        assert own.status_code == admin.status_code == 200, where
                        assert other.status_code == 404, where  # not 403: another's is not confirmed to exist
                        assert set(other.json()) == {"detail"} and "alicecell" not in other.text, where
                    elif route.path in LISTS:
                        assert own.status_code == other.status_code == admin.status_code == 200, where
                        assert mine in own.text and theirs not in own.text, where
                        assert theirs in other.text and mine not in other.text, where
                        assert mine in admin.text and theirs in admin.text, where
                    elif route.path == "/api/v1/worker":  # counters across every user: admins only (issue 23)
                        assert own.status_code == other.status_code == 403 and admin.status_code == 200, where
                    else:
                        assert own.status_code == other.status_code == 200, (where, own.status_code)
        assert tried == len(routes) >= 17

        # Bob's batch view of alice's batch, alice's image: absent for bob, there for the admin.
        with client("bob") as bob, client("root") as root:
            assert bob.get(f"/batches/{batch}").status_code == 404
            assert root.get(f"/api/v1/batches/{batch}").json()["total"] == 1
            assert bob.get(f"/api/v1/predictions/{mine}/images/composite.png").status_code == 404


def test_a_database_from_before_users_opens_and_its_tokens_still_work(world, capsys, tmp_path):
    """Columns added for users are added to an old database on open; its old tokens keep seeing everything."""
    import sqlite3

    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE tokens (id INTEGER PRIMARY KEY, name VARCHAR(200), token_sha256 VARCHAR(64) UNIQUE, created_at DATETIME);"
        "CREATE TABLE batch_jobs (id VARCHAR(32) PRIMARY KEY, created_at DATETIME, filename VARCHAR(500), archive_sha256 VARCHAR(64),"
        " model_key VARCHAR(64), status VARCHAR(16), total INTEGER, skipped JSON, error TEXT);"
        "CREATE TABLE submissions (id VARCHAR(32) PRIMARY KEY, created_at DATETIME, finished_at DATETIME, status VARCHAR(16),"
        " model_key VARCHAR(64), input_kind VARCHAR(16), files JSON, filenames TEXT, height INTEGER, width INTEGER,"
        " attempts INTEGER, error TEXT, batch_id VARCHAR(32));"
    )
    from protloc.web.storage import db

    connection.execute("INSERT INTO tokens (name, token_sha256, created_at) VALUES ('old', ?, '2026-01-01')",
                       (db.token_digest("old-token"),))
    connection.execute("INSERT INTO submissions VALUES ('0ld5ub', '2026-01-01', NULL, 'queued', 'tiny', 'channels', '[]',"
                       " 'oldsample', 64, 64, 0, NULL, NULL)")
    connection.commit()
    connection.close()
    settings = WebSettings(predictors=world["predictors"], data_dir=tmp_path / "data", database_url=f"sqlite:///{path}",
                           run_worker=False)
    with LiveServer(settings) as live:
        with httpx.Client(base_url=live.url, headers={"Authorization": "Bearer old-token"}) as old:
            assert old.get("/api/v1/predictions").json()["items"][0]["id"] == "0ld5ub"
        assert httpx.get(live.url + "/api/v1/predictions").status_code == 401


def test_the_service_imports_without_fastapi(tmp_path):
    """The platform's logic is FastAPI-free: a worker process or a script can use it alone."""
    import subprocess
    import sys

    code = ("import sys; sys.modules.update({m: None for m in ('fastapi', 'starlette', 'uvicorn')}); "
            "import protloc.web.http.service, protloc.web.uploads.batches, protloc.web.storage.db; print('imported')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def test_user_commands_refuse_what_makes_no_sense(tmp_path, capsys):
    data_dir = tmp_path / "d"
    assert main(["serve", "--data-dir", str(data_dir), "--admin"]) == 2
    assert "--admin goes with --create-user" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(data_dir), "--revoke-user", "nobody"]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(data_dir), "--create-user", "   "]) == 2
    assert "a user needs a name" in capsys.readouterr().err
