"""The CI rule of tests/conftest.py: under CI=true every kind of skip is a failure; elsewhere a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPPING_TESTS = '''
import pytest

def test_runs():
    assert True

def test_skip_call():
    pytest.skip("needs ../shared")

@pytest.mark.skipif(True, reason="no chromium")
def test_skipif_mark():
    pass

def test_importorskip_inside():
    pytest.importorskip("no_such_module_for_protloc")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
'''

MODULE_LEVEL_SKIP = '''
import pytest

pytest.importorskip("no_such_module_for_protloc", reason="browser tests need playwright")

def test_never_collected():
    pass
'''


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    (tmp_path / "test_module_skip.py").write_text(MODULE_LEVEL_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if env.get("PYTHONPATH"):  # the inner run has another working directory
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def outcomes(result: subprocess.CompletedProcess) -> dict[str, int]:
    """{'passed': n, 'failed': n, 'error': n, ...} from pytest's last line."""
    line = result.stdout.strip().splitlines()[-1]
    counts = {}
    for part in line.split(" in ")[0].split(","):
        number, word = part.split()
        counts[word.rstrip("s") if word.endswith("errors") else word] = int(number)
    counts.pop("warnings", None)  # installed pytest plugins (napari's, with the napari extra) may warn
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("ci", ["true"])
def test_every_skip_fails_under_ci(tmp_path, ci):
    result = run_suite(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    counts = outcomes(result)
    # the three test-level skips and the module-level importorskip fail (a skip found while setting a
    # test up or collecting a module is reported as an error); the passing test and the xfail stay so
    assert counts.get("failed", 0) + counts.get("error", 0) == 4, result.stdout
    assert counts.get("passed") == 1 and counts.get("xfailed") == 1 and "skipped" not in counts, counts
    for reason in ("needs ../shared", "no chromium", "no_such_module_for_protloc", "browser tests need playwright"):
        assert reason in result.stdout, reason
    assert "skipped under CI=true" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_stay_skips_outside_ci(tmp_path, ci):
    result = run_suite(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert outcomes(result) == {"passed": 1, "skipped": 4, "xfailed": 1}, result.stdout
