"""The platform's database: users and their tokens, submissions, their results, loaded models and batch jobs.

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

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

# Submission states. "queued" and "running" are unfinished: a restart puts them back in the queue, and
# a "running" row whose worker's lease has run out is taken by another worker (protloc.web.queue.jobs).
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


class User(Base):
    """Someone who submits: sees their own submissions and batches; an admin sees everyone's."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BatchJob(Base):
    """A zip of many samples; its progress is the state of its submissions."""

    __tablename__ = "batch_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
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
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
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
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)  # who holds (or finished) it
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # held till then by ``worker``
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
    # How many cells its CellResult holds, or why none (NULL, NULL: no cells were computed, --no-cells):
    # here so that a submission's JSON, listed or polled, says so without reading the cells.
    cells_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cells_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "whole-image" (the pass that gives the cells) or "patches"; NULL: a row from before, patches.
    probabilities_from: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The arithmetic that answered (fp32, bf16, fp16, int8; protloc.inference.precision); NULL: before, fp32.
    precision: Mapped[str | None] = mapped_column(String(8), nullable=True)
    submission: Mapped[Submission] = relationship(back_populates="result")


class CellResult(Base):
    """A submission's cells (``protloc.cells``), written with its probabilities: the per-cell rows, or
    why there are none (``note``: no cells found, not a GapNet-PL model, scikit-image missing...).
    The label image lies in the store (``protloc.web.pictures.cells.labels_path``): a 16-bit PNG, 32-bit TIFF past 65535 cells."""

    __tablename__ = "cell_results"
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    # [{"cell_id", "centroid_y", "centroid_x", "area", "border", "probabilities": [...], "predicted": [...],
    #   "top_class", "outline": [[x, y], ...]}, ...] in the order of the cell ids
    cells: Mapped[list] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token a facility hands to a user; only its sha256 is stored.

    A token from before users existed has no user and keeps seeing everything, as it did then.
    """

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# Columns added after the first release: a database made before them gains them on open.
ADDED_COLUMNS = {
    "tokens": {"user_id": "INTEGER REFERENCES users(id)", "revoked_at": "TIMESTAMP"},
    "submissions": {"owner_id": "INTEGER REFERENCES users(id)", "worker": "VARCHAR(100)", "lease_until": "TIMESTAMP"},
    "batch_jobs": {"owner_id": "INTEGER REFERENCES users(id)"},
    "results": {"cells_count": "INTEGER", "cells_note": "TEXT", "probabilities_from": "VARCHAR(16)",
                "precision": "VARCHAR(8)"},
}


def add_missing_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table, columns in ADDED_COLUMNS.items():
            present = {column["name"] for column in inspector.get_columns(table)}
            for name, kind in columns.items():
                if name not in present:
                    connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


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
    add_missing_columns(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _new_token(session: Session, user: User) -> str:
    token = secrets.token_urlsafe(24)
    session.add(ApiToken(name=user.name, token_sha256=token_digest(token), user_id=user.id))
    return token


def create_user(sessions: sessionmaker[Session], name: str, admin: bool = False) -> str:
    """A new user and their first token, returned (the only time it is shown); ProtlocError if NAME exists."""
    from protloc.errors import ProtlocError

    name = " ".join(name.split())
    if not name:
        raise ProtlocError("a user needs a name")
    with sessions.begin() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise ProtlocError(f"user {name!r} exists; give them another token with --create-token {name!r}")
        user = User(name=name, is_admin=admin)
        session.add(user)
        session.flush()
        return _new_token(session, user)


def create_token(sessions: sessionmaker[Session], name: str) -> str:
    """Another token for user ``name`` (a new, non-admin user if there is none); returned once."""
    name = " ".join(name.split())
    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            user = User(name=name, is_admin=False)
            session.add(user)
            session.flush()
        return _new_token(session, user)


def revoke_user(sessions: sessionmaker[Session], name: str) -> int:
    """Revoke every token of user ``name``; returns how many. ProtlocError if there is no such user."""
    from protloc.errors import ProtlocError

    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.name == " ".join(name.split())))
        if user is None:
            raise ProtlocError(f"no user {name!r}")
        tokens = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))).all()
        for token in tokens:
            token.revoked_at = utcnow()
        return len(tokens)


def holds_tokens(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return session.scalar(select(ApiToken.id).limit(1)) is not None


def token_owner(sessions: sessionmaker[Session], token: str) -> tuple[int | None, str, bool] | None:
    """(user id, name, admin) of a valid token; None when unknown or revoked. A token without a user
    (from before users existed) is (None, its name, True)."""
    with sessions() as session:
        row = session.execute(
            select(ApiToken.user_id, ApiToken.name, User.is_admin)
            .outerjoin(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_sha256 == token_digest(token), ApiToken.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    user_id, name, is_admin = row
    return user_id, name, bool(is_admin) if user_id is not None else True


def token_is_known(sessions: sessionmaker[Session], token: str) -> bool:
    return token_owner(sessions, token) is not None
