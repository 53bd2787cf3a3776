"""The schema, as SQLAlchemy 2 declarative models. Migrations in `store/migrations` create it.

Portable across PostgreSQL and SQLite: string ids (uuid4 hex), JSON columns, timezone-aware
timestamps, CHECK constraints instead of native enums (so adding a value is a plain migration).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey,
                        Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint,
                        false, text, true)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("student", "teacher", "admin")

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


COURSE_CHARS = 200  # a course name, wherever it is stored
SOURCE_CHARS = 1000  # a document's name within its course (content.source)
SECTION_CHARS = 400  # a course section's name (study.mastery.section_of)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# BigInteger ids that are still autoincrementing on SQLite (which only does so for INTEGER).
BigId = BigInteger().with_variant(Integer, "sqlite")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("auth_provider", "auth_subject", name="uq_users_auth_identity"),
        CheckConstraint("role IN ('student', 'teacher', 'admin')", name="role"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="student")
    tier: Mapped[str] = mapped_column(String(32), default="free")
    language: Mapped[str | None] = mapped_column(String(16))
    auth_provider: Mapped[str] = mapped_column(String(32))  # google | supabase | guest
    auth_subject: Mapped[str] = mapped_column(String(255))
    # Encrypted with accounts.secrets.SecretBox (Fernet); never stored in clear.
    oauth_refresh_token: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # The Stripe subscription behind `tier`, as last fetched from Stripe (billing.stripe).
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), index=True, unique=True)
    subscription_id: Mapped[str | None] = mapped_column(String(255))
    subscription_status: Mapped[str | None] = mapped_column(String(32))
    subscription_price: Mapped[str | None] = mapped_column(String(255))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False,
                                                       server_default=false())
    grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # past due
    seats: Mapped[int | None] = mapped_column(Integer)  # per-seat plans: students covered
    # Email (notify/): non-transactional mail stops once unsubscribed; weekly summaries may also
    # go to a parent's or teacher's address.
    email_unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    guardian_email: Mapped[str | None] = mapped_column(String(320))
    weekly_summary: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class ApiToken(Base):
    """Bearer tokens for programs. Only a SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BrowserSession(Base):
    """A signed-in browser (accounts.sessions): the signed cookie carries only `id`, and every
    request checks this row, so signing out (or revoking it from another browser) ends it at
    once. Rows past their lifetime or revoked are deleted at the user's next sign-in."""

    __tablename__ = "browser_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    user_agent: Mapped[str | None] = mapped_column(String(300))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Classroom(Base):
    """A teacher's class; its members are the students whose transcripts the teacher may read,
    from the moment each joined (with the class's `join_code`, which its teachers hand out)."""

    __tablename__ = "classes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    teacher_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    join_code: Mapped[str | None] = mapped_column(String(16), index=True, unique=True)
    # The course the class studies (as content.course names it): its teachers are that course's
    # teachers (they shape its tutor). None: a class not tied to a course.
    course: Mapped[str | None] = mapped_column(String(COURSE_CHARS), index=True)


class ClassMember(Base):
    __tablename__ = "class_members"

    class_id: Mapped[str] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"),
                                          primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)
    joined_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=now)


class Invitation(Base):
    """An invitation to a role (accounts.invitations): mailed through the outbox with a link
    carrying a secret token, of which only a SHA-256 is stored; the first signed-in user to
    redeem it before `expires_at` gets the role, once. The address is kept in clear, lowercased:
    the inviter sees whom they invited and revokes by it, and one open invitation per address is
    the unique index below (open: neither accepted nor revoked). The row goes with the account of
    whoever accepted it; an inviter's deletion leaves their invitations valid (`invited_by` NULL)."""

    __tablename__ = "invitations"
    __table_args__ = (
        CheckConstraint("role IN ('teacher', 'admin')", name="role"),
        Index("uq_invitations_open_email", "email", unique=True,
              sqlite_where=text("accepted_at IS NULL AND revoked_at IS NULL"),
              postgresql_where=text("accepted_at IS NULL AND revoked_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                   index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                                    index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


NOTE = "note"  # an interaction that is a student's note (study.notes), not a turn
TURN_KINDS = ("voice", "text")  # the interactions that are turns: spoken or typed


class Interaction(Base):
    """One tutor turn: what the student said (or typed), what the tutor answered, and timings."""

    __tablename__ = "interactions"
    __table_args__ = (Index("ix_interactions_user_created", "user_id", "created_at", "id"),
                      Index("ix_interactions_user_kind", "user_id", "kind", "id"),
                      Index("uq_interactions_write_id", "write_id", unique=True))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    course: Mapped[str | None] = mapped_column(String(COURSE_CHARS))
    kind: Mapped[str] = mapped_column(String(16), default="voice")  # voice | text | note
    response_id: Mapped[str | None] = mapped_column(String(64))
    transcript: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="completed")  # completed|cancelled|failed
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    stt_ms: Mapped[float | None] = mapped_column(Float)
    retrieval_ms: Mapped[float | None] = mapped_column(Float)
    llm_first_token_ms: Mapped[float | None] = mapped_column(Float)
    end_of_turn_to_first_delta_ms: Mapped[float | None] = mapped_column(Float)
    server_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # Notes (study.notes, kind "note"; title in `transcript`, text in `answer`): the student's own
    # turn a note was saved from (checked by the server; not a foreign key, see migration 0006),
    # and when it was last edited.
    turn_id: Mapped[int | None] = mapped_column(BigId, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Given by the background writer when the turn is accepted: a replay of the write-ahead
    # spool inserts it once (store.writer, store.spool; NULL for rows from before 0007 and notes).
    write_id: Mapped[str | None] = mapped_column(String(32))


class Quiz(Base):
    """A quiz as generated (study.quiz): its questions with the correct answers and the course
    sections each cites, kept so the student's answers are checked against them server-side."""

    __tablename__ = "quizzes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    course: Mapped[str | None] = mapped_column(String(COURSE_CHARS))
    topic: Mapped[str | None] = mapped_column(Text)
    # [{type, question, choices, answer_index, answer, explanation, sources, sections}]
    questions: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class QuizAnswer(Base):
    """A student's answer to one question of a quiz: once per question. `correct` is checked by
    the server for multiple choice, given by the student for an open question (self-assessed),
    NULL while an open answer is not marked; `sections` are the question's, copied so a class
    report replays mastery from the answers alone."""

    __tablename__ = "quiz_answers"
    __table_args__ = (UniqueConstraint("quiz_id", "question", name="uq_quiz_answers_question"),
                      Index("ix_quiz_answers_user_created", "user_id", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    quiz_id: Mapped[str] = mapped_column(ForeignKey("quizzes.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    question: Mapped[int] = mapped_column(Integer)  # its index in the quiz
    course: Mapped[str | None] = mapped_column(String(COURSE_CHARS))
    sections: Mapped[list[Any]] = mapped_column(JSON)
    choice: Mapped[int | None] = mapped_column(Integer)  # multiple choice: the index chosen
    text: Mapped[str | None] = mapped_column(Text)  # an open question: what the student wrote
    correct: Mapped[bool | None] = mapped_column(Boolean)
    self_assessed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Mastery(Base):
    """How well a student knows one section of a course (study.mastery): a moving average of
    their answers' correctness and when to review it next. `course` is '' for quizzes on no
    course (a primary key column cannot be NULL)."""

    __tablename__ = "mastery"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    course: Mapped[str] = mapped_column(String(COURSE_CHARS), primary_key=True)
    section: Mapped[str] = mapped_column(String(SECTION_CHARS), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    answers: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    interval_days: Mapped[float] = mapped_column(Float)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
FLAG_DIRECTIONS = ("input", "output")  # the student's words, or a sentence of the tutor's answer
FLAGGED_TEXT_CHARS = 4000  # of the flagged text, kept for the student's teachers


class FlaggedTurn(Base):
    """A turn moderation flagged (realtime.moderation): the student's words (`input`) or a
    sentence of the tutor's answer (`output`), with the categories that flagged it. Shown to the
    student's teachers; written by the background writer, like the turns."""

    __tablename__ = "flagged_turns"
    __table_args__ = (Index("ix_flagged_turns_user_created", "user_id", "created_at"),
                      Index("uq_flagged_turns_write_id", "write_id", unique=True),
                      CheckConstraint("direction IN ('input', 'output')", name="direction"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    course: Mapped[str | None] = mapped_column(String(COURSE_CHARS))
    response_id: Mapped[str | None] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text, default="")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    write_id: Mapped[str | None] = mapped_column(String(32))  # as Interaction.write_id


class Content(Base):
    """Course material, one row per chunk (filled by the RAG issue)."""

    __tablename__ = "content"
    __table_args__ = (Index("ix_content_course_source", "course", "source", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    course: Mapped[str] = mapped_column(String(COURSE_CHARS))
    source: Mapped[str] = mapped_column(String(SOURCE_CHARS))
    content_hash: Mapped[str] = mapped_column(String(64))  # of the whole source document
    heading_path: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 vector
    embedding_model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class PaymentTransaction(Base):
    """One Stripe event that moved money or changed a subscription (filled by the payments issue).
    Kept when a user deletes their account (bookkeeping), with the user link cleared."""

    __tablename__ = "payment_transactions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                index=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    event_type: Mapped[str] = mapped_column(String(100))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_object_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int | None] = mapped_column(BigInteger)  # smallest currency unit
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str | None] = mapped_column(String(50))
    tier: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class StripeEvent(Base):
    """Each Stripe webhook event processed, by id: a replayed or duplicated delivery is a no-op.
    Inserted in the same transaction as the changes the event made."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[int | None] = mapped_column(BigInteger)  # Stripe's timestamp of the event
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class UsageEntry(Base):
    """The usage ledger: voice milliseconds and chat messages charged, written off the hot path.
    The live counters are in billing.quota; this is the record to audit and report from."""

    __tablename__ = "usage_ledger"
    __table_args__ = (Index("ix_usage_ledger_user_created", "user_id", "created_at"),
                      Index("uq_usage_ledger_write_id", "write_id", unique=True))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # voice_ms | chat
    amount: Mapped[int] = mapped_column(BigInteger)
    tier: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    write_id: Mapped[str | None] = mapped_column(String(32))  # as Interaction.write_id


class EmailNotification(Base):
    """The email outbox: one row per message, written in the transaction of the change that
    caused it, claimed by a worker (notify.worker). Status: pending → sending → sent, or back to
    pending with a later `next_attempt_at`, or failed after the last attempt; `suppressed` when
    the user unsubscribed before it went; `unknown` when a worker stopped between sending and
    recording through a transport that cannot dedupe (SMTP), so it is not sent twice."""

    __tablename__ = "email_notifications"
    __table_args__ = (Index("ix_email_notifications_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    transactional: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True, default=new_id)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    language: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(Text)  # as rendered when sent
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # while sending
    transport: Mapped[str | None] = mapped_column(String(16))  # that took it: smtp | mcp | log


class CourseTutorVersion(Base):
    """One version of a course's tutor settings (study.tutor): the newest is the current one.
    Every change adds a row (who, when, the whole settings), so the history is the table."""

    __tablename__ = "course_tutor_versions"
    __table_args__ = (UniqueConstraint("course", "version",
                                       name="uq_course_tutor_versions_course_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    course: Mapped[str] = mapped_column(String(COURSE_CHARS))
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per course
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # dialogue.prompts.TutorSettings' fields
    updated_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def described_by_models(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Autogenerate's `include_name`: False for the full-text search objects of migration 0002
    (dialect-specific SQL the models cannot describe): `fts_*` tables (with FTS5's shadow
    tables) and indexes, and the `search` columns of content and interactions."""
    if type_ == "column":
        return not (name == "search" and parent_names.get("table_name") in ("content", "interactions"))
    return not (name or "").startswith("fts_")
