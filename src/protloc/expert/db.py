"""Where expert answers live: any SQLAlchemy database (an SQLite file in the study folder by default).

Every answer is committed the moment it is given, so a crash or restart loses nothing. The tables
carry an ``expert_`` prefix and their own metadata, so they can share a database with the web
platform's tables without clashing.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from protloc.errors import ProtlocError

NAME_MAX = 80


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Expert(Base):
    __tablename__ = "expert_experts"
    __table_args__ = (UniqueConstraint("study_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Answer(Base):
    __tablename__ = "expert_answers"
    __table_args__ = (UniqueConstraint("study_id", "expert_id", "sample_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), index=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("expert_experts.id"), index=True)
    sample_id: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(255))  # class name as in the study's label set
    source: Mapped[str] = mapped_column(String(16), default="web")  # "web" or "csv"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    changes: Mapped[int] = mapped_column(Integer, default=0)  # how often the expert changed this answer


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers do not block the writer; synchronous=FULL: a committed answer survives a power cut.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class AnswerStore:
    """The study's answers in a database; one short transaction per call."""

    def __init__(self, url: str, study_id: str) -> None:
        self.url = url
        self.study_id = study_id
        try:
            kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
            self.engine: Engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
        except (SQLAlchemyError, ValueError) as exc:
            raise ProtlocError(f"cannot open answer database {url}: {str(exc).splitlines()[0]}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    @staticmethod
    def clean_name(name: str) -> str:
        name = " ".join(str(name).split())
        if not name:
            raise ProtlocError("an expert needs a name")
        if len(name) > NAME_MAX:
            raise ProtlocError(f"expert name longer than {NAME_MAX} characters")
        return name

    def sign_in(self, name: str) -> Expert:
        """The expert of that name, created on first sign-in."""
        name = self.clean_name(name)
        with self._session() as session, session.begin():
            expert = session.scalar(select(Expert).where(Expert.study_id == self.study_id, Expert.name == name))
            if expert is None:
                expert = Expert(study_id=self.study_id, name=name)
                session.add(expert)
            expert.last_seen_at = utcnow()
        return expert

    def experts(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(Expert.name).where(Expert.study_id == self.study_id).order_by(Expert.name)))

    def set_answer(self, expert_name: str, sample_id: str, label: str, source: str = "web") -> Answer:
        """Store (or change) one answer and commit it at once."""
        expert = self.sign_in(expert_name)
        now = utcnow()
        with self._session() as session, session.begin():
            answer = session.scalar(select(Answer).where(
                Answer.study_id == self.study_id, Answer.expert_id == expert.id, Answer.sample_id == sample_id))
            if answer is None:
                answer = Answer(study_id=self.study_id, expert_id=expert.id, sample_id=sample_id, label=label,
                                source=source, created_at=now, updated_at=now, changes=0)
                session.add(answer)
            elif answer.label != label:
                answer.label, answer.updated_at, answer.source = label, now, source
                answer.changes += 1
        return answer

    def answers_of(self, expert_name: str) -> dict[str, str]:
        """sample id -> label for one expert."""
        with self._session() as session:
            rows = session.execute(
                select(Answer.sample_id, Answer.label).join(Expert, Expert.id == Answer.expert_id)
                .where(Answer.study_id == self.study_id, Expert.name == expert_name)
            )
            return {sample_id: label for sample_id, label in rows}

    def all_answers(self) -> dict[str, dict[str, str]]:
        """expert name -> {sample id -> label}."""
        result: dict[str, dict[str, str]] = {}
        with self._session() as session:
            rows = session.execute(
                select(Expert.name, Answer.sample_id, Answer.label).join(Expert, Expert.id == Answer.expert_id)
                .where(Answer.study_id == self.study_id)
            )
            for name, sample_id, label in rows:
                result.setdefault(name, {})[sample_id] = label
        return result


def set_answers_bulk(store: AnswerStore, rows: list[tuple[str, str, str]], source: str = "csv") -> int:
    """Store many (expert, sample id, label) answers in one transaction: all of them or none."""
    now = utcnow()
    with store._session() as session, session.begin():
        experts: dict[str, Expert] = {}
        for name in sorted({row[0] for row in rows}):
            expert = session.scalar(select(Expert).where(Expert.study_id == store.study_id, Expert.name == name))
            if expert is None:
                expert = Expert(study_id=store.study_id, name=name)
                session.add(expert)
                session.flush()
            experts[name] = expert
        for name, sample_id, label in rows:
            expert = experts[name]
            answer = session.scalar(select(Answer).where(
                Answer.study_id == store.study_id, Answer.expert_id == expert.id, Answer.sample_id == sample_id))
            if answer is None:
                session.add(Answer(study_id=store.study_id, expert_id=expert.id, sample_id=sample_id, label=label,
                                   source=source, created_at=now, updated_at=now, changes=0))
            elif answer.label != label:
                answer.label, answer.updated_at, answer.source = label, now, source
                answer.changes += 1
    return len(rows)


def import_answers_csv(study, store: AnswerStore, path) -> dict[str, int]:
    """Answers from a CSV with columns id, expert, label (studies run elsewhere, offline sheets).

    Every row is checked before anything is stored; the first bad row is a one-line ProtlocError.
    Returns answers per expert.
    """
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"no answers file {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
            missing = [c for c in ("id", "expert", "label") if c not in fields]
            if missing:
                raise ProtlocError(f"{path}: needs columns id,expert,label (missing {', '.join(missing)})")
            rows: list[tuple[str, str, str]] = []
            seen: dict[tuple[str, str], int] = {}
            for line, record in enumerate(reader, start=2):
                sample_id = (record.get(fields["id"]) or "").strip()
                expert = " ".join((record.get(fields["expert"]) or "").split())
                label_text = (record.get(fields["label"]) or "").strip()
                if not sample_id and not expert and not label_text:
                    continue  # blank line
                if not study.has_sample(sample_id):
                    raise ProtlocError(f"{path} line {line}: sample {sample_id!r} is not in the study")
                if not expert:
                    raise ProtlocError(f"{path} line {line}: no expert name")
                if not label_text:
                    raise ProtlocError(f"{path} line {line}: no label for sample {sample_id!r}")
                try:
                    label = study.class_name(label_text)
                except ProtlocError:
                    raise ProtlocError(
                        f"{path} line {line}: unknown class {label_text!r} (classes: {', '.join(study.classes)})"
                    ) from None
                key = (expert, sample_id)
                if key in seen:
                    raise ProtlocError(f"{path} line {line}: {expert!r} answers {sample_id!r} twice (also line {seen[key]})")
                seen[key] = line
                rows.append((AnswerStore.clean_name(expert), sample_id, label))
    except UnicodeDecodeError:
        raise ProtlocError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise ProtlocError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise ProtlocError(f"{path} has no answers")
    set_answers_bulk(store, rows)
    counts: dict[str, int] = {}
    for expert, _, _ in rows:
        counts[expert] = counts.get(expert, 0) + 1
    return counts
