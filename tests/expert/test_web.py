"""The annotation pages: HTTP API (TestClient) and the real page in headless Chromium (Playwright)."""

from __future__ import annotations

import socket
import threading
import json
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from protloc.expert.db import AnswerStore
from protloc.expert.study import load_study, select_study
from protloc.expert.web import create_expert_app
from tests.expert.test_data import build_dataset
from tests.helpers.web import wait_started

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("expert-web")
    data = build_dataset(base / "data", size=40)
    select_study(data, base / "study", n=6, seed=5)
    return base / "study"


def test_expert_order_is_personal_and_stable(study_dir):
    study = load_study(study_dir)
    orders = {name: study.expert_order(name) for name in ("Ada", "Bob", "Cy", "Dee")}
    assert all(sorted(order) == sorted(study.sample_ids) for order in orders.values())
    assert len({tuple(order) for order in orders.values()}) > 1  # 6! orders: four names do not all collide
    assert load_study(study_dir).expert_order("Ada") == orders["Ada"]


def test_api_flow_and_bad_requests(study_dir, tmp_path):
    study = load_study(study_dir)
    db_url = f"sqlite:///{tmp_path / 'answers.db'}"
    client = TestClient(create_expert_app(study, db_url))
    assert client.get("/api/session").status_code == 401
    assert client.get("/api/items/0").status_code == 401
    assert client.post("/api/signin", json={"name": "   "}).status_code == 422
    state = client.post("/api/signin", json={"name": "  Ada   Lovelace "}).json()
    assert state["expert"] == "Ada Lovelace" and state["total"] == 6 and state["resume"] == 0
    assert [c["key"] for c in state["classes"]][:3] == ["1", "2", "3"] and len(state["classes"]) == 13
    item = client.get("/api/items/0").json()
    order = study.expert_order("Ada Lovelace")
    # The page learns neither sample ids nor labels.
    text = client.get("/").text + str(item) + str(state)
    assert not any(sample_id in text for sample_id in study.sample_ids)
    image = client.get(item["views"][0]["url"])
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    assert client.put("/api/answers/0", json={"label": "Lysosome"}).status_code == 422
    assert client.put("/api/answers/6", json={"label": "Nucleus"}).status_code == 404
    assert client.get("/api/views/0123456789abcdef/protein.png").status_code == 404
    assert client.get(item["views"][0]["url"].replace("protein.png", "secret.png")).status_code == 404
    result = client.put("/api/answers/0", json={"label": "nucleus"}).json()
    assert result["label"] == "Nucleus" and result["answered"] == 1 and result["resume"] == 1
    assert AnswerStore(db_url, study.study_id).answers_of("Ada Lovelace") == {order[0]: "Nucleus"}


def test_app_mounts_under_a_prefix(study_dir, tmp_path):
    platform = FastAPI()
    platform.mount("/expert", create_expert_app(load_study(study_dir), f"sqlite:///{tmp_path / 'a.db'}"))
    client = TestClient(platform)
    page = client.get("/expert/")
    assert page.status_code == 200 and 'src="static/expert.js"' in page.text
    assert client.get("/expert/static/expert.js").status_code == 200
    response = client.post("/expert/api/signin", json={"name": "Ada"})
    assert response.status_code == 200 and "Path=/expert/" in response.headers["set-cookie"]
    assert client.get("/expert/api/items/0").status_code == 200


def answer_with_key_on(page, key: str, position: int, label: str) -> None:
    page.wait_for_function("document.body.dataset.busy === '0'")  # keys are ignored while a sample loads
    page.keyboard.press(key)
    page.wait_for_function(f"document.body.dataset.saved === {f'{position}:{label}'!r}")


class ServerThread:
    """uvicorn on a loopback port in a thread; stop() and start again simulate a server restart."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_started(self.server, self.thread)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian chromium not installed")
def test_browser_sign_in_answer_change_reload_resume_restart(study_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    study = load_study(study_dir)
    db_url = f"sqlite:///{tmp_path / 'answers.db'}"
    store = AnswerStore(db_url, study.study_id)
    classes = study.classes
    order = study.expert_order("Grace")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = ServerThread(create_expert_app(study, db_url), port)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.fill("#name", "Grace")
            page.click("#signin")
            progress = page.locator("#progress")
            sync_api.expect(progress).to_have_text("Sample 1 of 6 · 0 answered")
            # Four full-resolution views, loaded.
            page.wait_for_function("[...document.querySelectorAll('.view img')].length === 4 && "
                                   "[...document.querySelectorAll('.view img')].every(i => i.naturalWidth === 40)")

            def answer_with_key(key: str, position: int, label: str) -> None:
                answer_with_key_on(page, key, position, label)

            answer_with_key("1", 0, classes[0])  # key 1: first class
            assert store.answers_of("Grace") == {order[0]: classes[0]}
            sync_api.expect(progress).to_have_text("Sample 2 of 6 · 1 answered")
            answer_with_key("e", 1, classes[12])  # key e: 13th class
            assert store.answers_of("Grace") == {order[0]: classes[0], order[1]: classes[12]}

            # Back to sample 2, which shows its answer; change it with another key.
            page.keyboard.press("ArrowLeft")
            sync_api.expect(progress).to_have_text("Sample 2 of 6 · 2 answered")
            sync_api.expect(page.locator("#answers button.chosen")).to_have_attribute("data-label", classes[12])
            answer_with_key("0", 1, classes[9])
            assert store.answers_of("Grace") == {order[0]: classes[0], order[1]: classes[9]}

            # Zoom with the wheel: all four views follow the same transform.
            page.mouse.move(200, 300)
            page.locator(".view").first.hover()
            page.mouse.wheel(0, -400)
            transforms = page.eval_on_selector_all(".view img", "imgs => imgs.map(i => i.style.transform)")
            assert len(set(transforms)) == 1 and "scale" in transforms[0]
            scale = float(transforms[0].split("scale(")[1].rstrip(")"))
            assert scale > 1.0  # fitted 40 px images are scaled up; zooming in scales further

            # Reload: signed in still, resumes at the first unanswered sample.
            page.reload()
            sync_api.expect(progress).to_have_text("Sample 3 of 6 · 2 answered")
            browser.close()

        # A restart of the server keeps everything.
        server.stop()
        server = ServerThread(create_expert_app(load_study(study_dir), db_url), port)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(url)
            page.fill("#name", "Grace")
            page.click("#signin")
            progress = page.locator("#progress")
            sync_api.expect(progress).to_have_text("Sample 3 of 6 · 2 answered")
            for _ in range(2):
                page.wait_for_function("document.body.dataset.busy === '0'")
                page.click("#prev")
            sync_api.expect(progress).to_have_text("Sample 1 of 6 · 2 answered")
            sync_api.expect(page.locator("#answers button.chosen")).to_have_attribute("data-label", classes[0])
            page.locator("#answers button", has_text=classes[4]).click()  # change by clicking a button
            page.wait_for_function(f"document.body.dataset.saved === {f'0:{classes[4]}'!r}")
            assert store.answers_of("Grace") == {order[0]: classes[4], order[1]: classes[9]}
            # Finish the study: forward to the first open sample, answer the rest by keys.
            sync_api.expect(progress).to_have_text("Sample 2 of 6 · 2 answered")  # answering moved on
            page.wait_for_function("document.body.dataset.busy === '0'")
            page.click("#next")
            for position, key in zip(range(2, 6), "2345"):
                sync_api.expect(progress).to_have_text(f"Sample {position + 1} of 6 · {position} answered")
                answer_with_key_on(page, key, position, classes["1234567890qwe".index(key)])
            sync_api.expect(page.locator("#status")).to_contain_text("All 6 samples answered")
            page.screenshot(path=str(tmp_path / "expert-page.png"))
            browser.close()
        answers = store.answers_of("Grace")
        assert len(answers) == 6 and answers[order[5]] == classes[4]
    finally:
        server.stop()
        store.close()

    # The browser expert joins two simulated (CSV) experts and the fine-tuned model in the report.
    from protloc.cli import main
    from tests.expert.test_workflow import make_run, simulated_expert

    torch.set_num_threads(1)
    run = make_run(tmp_path / "run")
    data = study.data["root"]
    assert main(["finetune-multiclass", str(run), "--data", data, "--steps", "100"]) == 0
    assert main(["expert", "predict", str(study_dir), "--model", str(run)]) == 0
    truth = {s["id"]: s["label"] for s in study.samples}
    sheet = tmp_path / "answers.csv"
    lines = ["id,expert,label"]
    for seed, name in ((1, "Sim A"), (2, "Sim B")):
        lines += [f"{s},{name},{label}" for s, label in simulated_expert(truth, classes, 0.7, seed).items()]
    sheet.write_text("\n".join(lines) + "\n")
    assert main(["expert", "import", str(study_dir), str(sheet), "--db", db_url]) == 0
    assert main(["expert", "report", str(study_dir), "--db", db_url, "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["raters"]) == {"model", "Grace", "Sim A", "Sim B"}
    assert report["raters"]["Grace"]["answered"] == 6
    grace_accuracy = sum(answers[s] == truth[s] for s in answers) / 6
    assert report["raters"]["Grace"]["accuracy"] == pytest.approx(grace_accuracy)
    assert {r["expert"] for r in report["model_vs_expert"]} == {"Grace", "Sim A", "Sim B"}
    assert all(r["method"] == "exact binomial" for r in report["model_vs_expert"])  # 6 samples: few discordant
    assert len(report["agreement"]["cohen"]) == 3 and report["agreement"]["fleiss"]["n"] == 6
    for rater in report["raters"].values():
        assert (tmp_path / "report" / rater["figure"]).is_file()


def test_a_view_whose_source_file_is_gone_is_a_410_with_the_reason(tmp_path, caplog):
    """Not a 500: the server works, the data set lost the file. The answer names no sample id."""
    data = build_dataset(tmp_path / "data", size=40)
    select_study(data, tmp_path / "study", n=2, seed=7)
    study = load_study(tmp_path / "study")
    client = TestClient(create_expert_app(study, f"sqlite:///{tmp_path / 'answers.db'}"))
    client.post("/api/signin", json={"name": "Ada"})
    item = client.get("/api/items/0").json()
    sample_id = study.expert_order("Ada")[0]
    for path in Path(data).rglob("*"):
        if path.is_file() and sample_id in path.name:
            path.unlink()
    image = client.get(item["views"][0]["url"])
    assert image.status_code == 410, image.text
    assert "missing or unreadable" in image.json()["detail"]
    assert sample_id not in image.text
    assert "cannot render a view" in caplog.text
