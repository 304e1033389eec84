"""The platform's database: submissions, their results, loaded models, API tokens and batch jobs.

SQLAlchemy 2 ORM over any SQLAlchemy URL (``sqlite:///path.db`` by default, PostgreSQL through
``postgresql+psycopg://...``). A submission and everything it needs to run again (the content
addresses of its uploaded files) are written in one transaction, so a failed upload leaves no row;
a result is written together with the submission's ``done`` status, so a restart never sees half of it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

# Submission states. "queued" and "running" are unfinished: a restart puts them back in the queue.
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
UNFINISHED = (QUEUED, RUNNING)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Base(DeclarativeBase):
    pass


class ModelRecord(Base):
    """A model the server has offered; kept so old submissions still name the model they used."""

    __tablename__ = "models"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    classes: Mapped[list] = mapped_column(JSON)
    patch_size: Mapped[int] = mapped_column(Integer)
    last_loaded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BatchJob(Base):
    """A zip of many samples; its progress is the state of its submissions."""

    __tablename__ = "batch_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    filename: Mapped[str] = mapped_column(String(500))
    archive_sha256: Mapped[str] = mapped_column(String(64))
    model_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="extracting")  # extracting|queued|failed
    total: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[list] = mapped_column(JSON, default=list)  # [{"name": ..., "reason": ...}]
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submissions: Mapped[list["Submission"]] = relationship(back_populates="batch")


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    model_key: Mapped[str] = mapped_column(String(64))
    # "channels": four single-channel files; "multichannel": one TIFF/NPZ with all four
    input_kind: Mapped[str] = mapped_column(String(16))
    # [{"filename": original name, "sha256": content address, "channel": name or null}, ...]
    files: Mapped[list] = mapped_column(JSON)
    filenames: Mapped[str] = mapped_column(Text, index=True)  # joined names, for search
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batch_jobs.id"), nullable=True, index=True)
    batch: Mapped[BatchJob | None] = relationship(back_populates="submissions")
    result: Mapped["Result | None"] = relationship(back_populates="submission", uselist=False)


class Result(Base):
    __tablename__ = "results"
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), primary_key=True)
    classes: Mapped[list] = mapped_column(JSON)
    probabilities: Mapped[list] = mapped_column(JSON)
    thresholds: Mapped[list] = mapped_column(JSON)
    predicted: Mapped[list] = mapped_column(JSON)
    predicted_text: Mapped[str] = mapped_column(Text, index=True)  # "|Nucleus|Cytosol|" for filtering
    maps: Mapped[list] = mapped_column(JSON)  # class names with a rendered localisation map
    seconds: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    submission: Mapped[Submission] = relationship(back_populates="result")


class ApiToken(Base):
    """A bearer token a facility hands to a user; only its sha256 is stored."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Request threads and the worker thread share the file; WAL lets readers run during a write.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_database(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def create_token(sessions: sessionmaker[Session], name: str) -> str:
    """Store a new random token under ``name`` and return it (the only time it is shown)."""
    token = secrets.token_urlsafe(24)
    with sessions.begin() as session:
        session.add(ApiToken(name=name, token_sha256=token_digest(token)))
    return token


def token_is_known(sessions: sessionmaker[Session], token: str) -> bool:
    with sessions() as session:
        return session.scalar(select(ApiToken.id).where(ApiToken.token_sha256 == token_digest(token))) is not None
