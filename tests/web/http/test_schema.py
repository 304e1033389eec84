"""The API against its own OpenAPI schema: schemathesis generates requests for every documented route
(valid and invalid ones, about a minute in all); no answer may be a server error or differ from what the schema promises."""

from __future__ import annotations

import os
import pytest
from hypothesis import HealthCheck, Phase, settings

import protloc
from protloc.web.settings import WebSettings

from tests.helpers.web import LiveServer, make_model_file, wait_healthy

schemathesis = pytest.importorskip("schemathesis", reason="the schema test needs schemathesis (dev extra)")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow  # a real browser / server / viewer: left to the full run

# per route and mode: about half a minute on two busy cores; PROTLOC_SCHEMA_EXAMPLES=500 for a long hunt
EXAMPLES_PER_ROUTE = int(os.environ.get("PROTLOC_SCHEMA_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schema")
    predictors = {"tiny": protloc.load_model(make_model_file(folder / "tiny.pt"))}
    with LiveServer(WebSettings(predictors=predictors, data_dir=folder / "data", max_upload_bytes=1 << 20,
                                max_batch_bytes=4 << 20)) as server:
        yield server


def test_every_answer_is_what_the_schema_says(live):
    """Each documented operation gets EXAMPLES_PER_ROUTE generated requests; every failure is listed."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance]
    failures: list[str] = []
    tried: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation, mode in [(o, m) for m in schemathesis.GenerationMode for o in operations]:
        tried.append(f"{operation.label} ({mode.value})")

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate], database=None, derandomize=True)
        def run(case):
            case.call_and_validate(checks=checks)

        try:
            run()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, free-form strings)
            assert mode is schemathesis.GenerationMode.NEGATIVE, tried[-1]
        except (Exception, BaseExceptionGroup) as exc:  # the check's own report: which request, which answer, what was wrong
            failures.append(f"{tried[-1]}: {str(exc)[:2000]}")
    assert len(operations) >= 10, tried
    assert not failures, "\n\n".join(failures)


def test_the_schema_names_the_real_content_types_and_refusals(live):
    import httpx

    paths = httpx.get(live.url + "/openapi.json").json()["paths"]
    assert set(paths["/api/v1/predictions/export.csv"]["get"]["responses"]["200"]["content"]) == {"text/csv"}
    assert set(paths["/api/v1/predictions/{submission_id}/result.csv"]["get"]["responses"]["200"]["content"]) == {"text/csv"}
    image = paths["/api/v1/predictions/{submission_id}/images/{name}"]["get"]["responses"]
    assert set(image["200"]["content"]) == {"image/png"} and set(image["404"]["content"]) == {"application/json"}
    for path, method in (("/api/v1/predictions", "post"), ("/api/v1/batches", "post")):
        assert {"400", "413", "415", "422"} <= set(paths[path][method]["responses"]), path


def test_schemathesis_run_with_all_checks_against_protloc_serve_finds_nothing(tmp_path):
    """The command-line run of issue 23: `schemathesis run --checks all` (every check, the coverage,
    fuzzing and stateful phases) against a live `protloc serve` on 127.0.0.1, with the repository's
    schemathesis.toml. PROTLOC_SCHEMATHESIS_EXAMPLES per operation (default 5; 25 for the report)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    cli = Path(sys.executable).with_name("schemathesis")
    assert cli.exists(), f"no schemathesis command beside {sys.executable}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "protloc", "serve", "--model", str(make_model_file(tmp_path / "tiny.pt")),
         "--data-dir", str(tmp_path / "data"), "--port", str(port), "--max-upload-mb", "1", "--max-batch-mb", "4",
         "--log-level", "error"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, lambda: server.stderr.read() if server.poll() is not None else "")
        examples = os.environ.get("PROTLOC_SCHEMATHESIS_EXAMPLES", "5")
        run = subprocess.run([str(cli), "run", url + "/openapi.json", "--checks", "all", "-n", examples,
                              "--max-time", "300", "-w", "1", "--no-color"],
                             cwd=root, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert "Failures:" not in run.stdout and "passed" in summary, summary
