"""Suite-wide rules.

Under ``CI=true`` a test that cannot run is a failure, not a skip: the project's rule is that CI runs
every test (../shared beside the clone, chromium, playwright, statsmodels, ...), so a skip there means
something CI should have had is missing. One mechanism for every skip site (``pytest.skip``,
``skipif`` marks, ``importorskip`` in a test or at module level): the reports are turned into
failures that keep the skip's reason. Expected failures (xfail) are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_ENV = "PROTLOC_SHARED"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def shared_dir() -> Path:
    """../shared beside the repository (or $PROTLOC_SHARED): the paper, weights and real HPA images."""
    configured = os.environ.get(SHARED_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report, where: str) -> None:
    reason = _skip_reason(report.longrepr).removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"{where} skipped under CI=true, where every test must run: {reason}"


def pytest_configure(config):
    if in_ci():  # a module failed for a missing dependency must not hide the results of all the others
        config.option.continue_on_collection_errors = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:  # a module-level importorskip / pytestmark skip
        _fail_skip(report, collector.nodeid)


@pytest.fixture(autouse=True)
def _restore_pixel_limit():
    """``--max-pixels`` sets the process-wide limit (an environment variable, for worker processes);
    a CLI call inside one test must not change the limit of the next."""
    from protloc.data.limits import MAX_PIXELS_ENV

    saved = os.environ.get(MAX_PIXELS_ENV)
    yield
    if saved is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
    else:
        os.environ[MAX_PIXELS_ENV] = saved


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A GapNet-PL model file with random weights (seed 0), the 13 classes and thresholds 0.5: for tests of
    the plumbing around a model, not of its answers."""
    import torch

    from protloc.model_file import save_model_file
    from protloc.labels import HPA13
    from protloc.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=64, thresholds=[0.5] * 13)
    return path
