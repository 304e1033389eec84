"""`protloc serve` as a real process against raw sockets: stalled and vanished clients, huge headers,
tokens in addresses. What the server logs is read back from its own output."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers.web import make_model_file, wait_healthy

TOKEN = "SECRET-TOKEN-4c1d"
CLIENT_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    model = make_model_file(folder / "tiny.pt")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "protloc", "serve", "--model", str(model), "--data-dir", str(folder / "data"),
             "--port", str(port), "--auth-token", TOKEN, "--client-timeout", str(CLIENT_TIMEOUT), "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, log_path.read_text)
    yield {"url": url, "port": port, "log": log_path}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_after(served, mark: int) -> str:
    time.sleep(0.3)  # the server's output is line-buffered to a file
    return served["log"].read_text()[mark:]


def log_mark(served) -> int:
    return len(served["log"].read_text())


def raw_connection(served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served["port"]), timeout=10)


def closed_by_server_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes the connection (recv gives b''), reading whatever it answers."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, socket.timeout):
        pytest.fail(f"the server kept a stalled connection open for {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_the_token_never_reaches_the_log(served):
    mark = log_mark(served)
    url = served["url"]
    assert httpx.get(url + "/history", params={"q": "x", "token": TOKEN}).status_code == 303
    assert httpx.get(url + "/api/v1/models", params={"token": TOKEN}).status_code == 401
    assert httpx.post(url + "/api/v1/predictions", params={"token": TOKEN}, files={"files": ("a.tif", b"x")}).status_code == 401
    log = log_after(served, mark)
    assert "GET /history?q=x&token=[redacted]" in log  # the request is logged, its token is not
    assert TOKEN not in served["log"].read_text()


def test_headers_over_the_limit_get_a_431_not_a_reset(served):
    for size in (100_000, 200_000, 1_000_000):
        response = httpx.get(served["url"] + "/health", headers={"X-Padding": "a" * size}, timeout=30)
        assert response.status_code == 431, size
        assert "request headers over 64 KB" in response.json()["detail"]
    assert httpx.get(served["url"] + "/health", headers={"X-Padding": "a" * 30_000}).status_code == 200


def test_silent_and_slow_clients_are_cut_off(served):
    mark = log_mark(served)
    silent = raw_connection(served)
    slow_headers = raw_connection(served)
    slow_headers.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then nothing: the headers never end
    stalled_body = raw_connection(served)
    stalled_body.sendall(
        b"POST /api/v1/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="files"; filename="a_blue.tif"\r\n\r\n' + b"\0" * 1000
    )
    for sock in (silent, slow_headers, stalled_body):
        assert closed_by_server_within(sock, CLIENT_TIMEOUT + 5) < CLIENT_TIMEOUT + 5
        sock.close()
    log = log_after(served, mark)
    assert log.count(f"sent nothing for {CLIENT_TIMEOUT:g}s in the middle of a request") == 2
    assert "Traceback" not in log
    assert httpx.get(served["url"] + "/health").status_code == 200


def test_a_client_vanishing_mid_upload_costs_one_log_line(served):
    mark = log_mark(served)
    for _ in range(3):
        sock = raw_connection(served)
        sock.sendall(
            b"POST /api/v1/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
            + b'--b\r\nContent-Disposition: form-data; name="files"; filename="a_blue.tif"\r\n\r\n' + b"\0" * 200_000
        )
        time.sleep(0.2)
        sock.close()
    time.sleep(0.5)
    log = log_after(served, mark)
    assert log.count("disconnected during the upload to /api/v1/predictions; nothing stored") == 3, log
    assert "Traceback" not in log and "Exception in ASGI application" not in log
