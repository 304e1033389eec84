"""uvicorn as the platform runs it: clients that stall are cut off, oversized headers get a 431, and
tokens never reach the log.

uvicorn's h11 protocol closes idle keep-alive connections (``timeout_keep_alive``) but waits for ever
on a client that opens a connection and sends nothing, sends its headers a byte at a time, or stops
half-way through a body; and it answers over-long headers with a 400 and an immediate close, which
the still-sending client sees as a connection reset. ``GuardedH11Protocol`` adds a read timeout
while a request is being received and answers over-long headers with a 431, then reads the rest of
what the client sends before closing, so that the client gets to read the answer.
"""

from __future__ import annotations

import copy
import json
import logging
import re

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_SECONDS = 5
CLIENT_TIMEOUT_SECONDS = 30.0
MAX_HEADER_BYTES = 64 * 1024
DRAIN_SECONDS = 5.0
# A body must average at least this many bytes per second once its first seconds are over: a client
# trickling a byte every two seconds never falls silent long enough for the read timeout, and would
# hold a connection (and an upload's temporary file) for as long as it likes.
MIN_BODY_BYTES_PER_SECOND = 1024
BODY_RATE_GRACE_SECONDS = 10.0
TOKEN_IN_TEXT = re.compile(r"(?i)(token=)[^&\s\"']*")


class RedactTokens(logging.Filter):
    """Tokens in logged addresses (``?token=...``) become ``token=[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a.lower() for a in record.args):
            record.args = tuple(TOKEN_IN_TEXT.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = TOKEN_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a timeout on a client's silence mid-request and a 431 for oversized headers."""

    client_timeout = CLIENT_TIMEOUT_SECONDS
    min_body_rate = MIN_BODY_BYTES_PER_SECOND
    body_rate_grace = BODY_RATE_GRACE_SECONDS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer = None
        self._draining = False
        self._body_since = None  # (start time, bytes since) of the body being received

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the rest of a refused request: read, so the client is not reset, and dropped
        if self.conn.their_state is h11.IDLE:
            # h11 limits only a head that arrives in pieces; one that arrives whole is checked here.
            head = self.conn.trailing_data[0] + data
            end = head.find(b"\r\n\r\n")
            if (end < 0 and len(head) > MAX_HEADER_BYTES) or end + 4 > MAX_HEADER_BYTES:
                self._unset_keepalive_if_required()
                self.logger.warning("%s sent request headers over %d KB: 431", self._client_name(), MAX_HEADER_BYTES // 1024)
                self._refuse(431)
                return
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm()  # a body may take long; silence may not
            if self._too_slow(len(data)):
                return
        elif state is h11.IDLE and self.conn.trailing_data[0]:
            if self._read_timer is None:
                self._arm()  # headers must be complete within the timeout of their first byte
        else:
            self._disarm()
        if state is not h11.SEND_BODY:
            self._body_since = None

    def _too_slow(self, received: int) -> bool:
        """Cut a body that arrives slower than ``min_body_rate`` on average after ``body_rate_grace``
        seconds. A pause of ours (the application not reading) starts the measure again."""
        now = self.loop.time()
        if self._body_since is None or self.flow.read_paused:
            self._body_since = (now, 0)
            return False
        start, count = self._body_since
        count += received
        self._body_since = (start, count)
        elapsed = now - start
        if elapsed < self.body_rate_grace or count >= self.min_body_rate * elapsed:
            return False
        self.logger.warning("%s sent its body at %.0f bytes/s (under %d for %.0f s); connection closed",
                            self._client_name(), count / elapsed, self.min_body_rate, elapsed)
        self._disarm()
        self.transport.close()
        return True

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.client_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self.flow.read_paused:
            self._arm()  # we stopped reading (the application is busy), not the client
            return
        if state not in (h11.IDLE, h11.SEND_BODY):
            return
        if state is h11.SEND_BODY or self.conn.trailing_data[0]:
            self.logger.warning("%s sent nothing for %gs in the middle of a request; connection closed",
                                self._client_name(), self.client_timeout)
        self.transport.close()

    def _client_name(self) -> str:
        return "%s:%d" % self.client if self.client else "a client"

    def send_400_response(self, msg: str) -> None:
        # h11 refused the request; a head over the size limit is a 431, anything else a 400.
        self._refuse(431 if len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES else 400)

    def _refuse(self, status: int) -> None:
        reason, detail = ((b"Request Header Fields Too Large", f"request headers over {MAX_HEADER_BYTES // 1024} KB")
                          if status == 431 else (b"Bad Request", "invalid HTTP request"))
        body = json.dumps({"detail": detail}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        # Closing now, with the client's unread bytes still arriving, would reset the connection and
        # lose the answer: half-close, read and drop the rest until the client closes (or a deadline).
        self._draining = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)

    def eof_received(self):
        if self._draining:
            self.transport.close()
        return super().eof_received()


def log_config() -> dict:
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config


def server_config(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  client_timeout: float = CLIENT_TIMEOUT_SECONDS) -> uvicorn.Config:
    protocol = type("ProtlocH11Protocol", (GuardedH11Protocol,), {"client_timeout": float(client_timeout)})
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", http=protocol, log_config=log_config(),
        timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def serve(app, host: str, port: int, log_level: str = "info", client_timeout: float = CLIENT_TIMEOUT_SECONDS) -> None:
    try:
        uvicorn.Server(server_config(app, host, port, log_level, client_timeout)).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled with a clean shutdown (as uvicorn.run does)
        pass
