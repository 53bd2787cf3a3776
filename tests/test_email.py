"""The email outbox end to end: rows written with the change that caused them, a worker sending
them through a real SMTP server on loopback (aiosmtpd) or through the real MCP email tool server,
retries with backoff, `failed` with the reason, no double send after a crash, several workers on
PostgreSQL sharing the outbox, unsubscribe links, weekly summaries from seeded interactions, and
the `/api/email` routes."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from notify.mcp_client import McpEmailTransport
from notify.message import Email
from notify.render import Renderer
from notify.smtp import SmtpTransport
from notify.summary import last_full_week, queue_weekly_summaries, topics
from notify.worker import OutboxWorker, WorkerConfig, requeue
from store import queries
from store.models import ClassMember, EmailNotification, Interaction, User
from tests.conftest import make_settings
from tests.smtp_sink import SmtpSink, smtp_sink  # noqa: F401  (a fixture)
from tests.storage_fixtures import db  # noqa: F401  (a fixture: SQLite and PostgreSQL)

SECRET = "link-secret"


def worker_for(db, transport, **config) -> OutboxWorker:  # noqa: F811
    clock = Clock()
    w = OutboxWorker(db, transport, Renderer(),
                     WorkerConfig(sender="Tutor <tutor@example.org>", base_url="http://tutor.test",
                                  link_secret=SECRET, retry_base_s=10, **config), clock=clock)
    w.clock_ref = clock  # type: ignore[attr-defined]
    return w


class Clock:
    """The worker's clock, moved forward by tests instead of sleeping through backoffs."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def smtp(sink: SmtpSink) -> SmtpTransport:
    return SmtpTransport(sink.host, sink.port, starttls=False, timeout_s=5)


async def new_user(db, email="ada@example.com", name="Ada", **fields) -> User:  # noqa: F811
    async with db.session() as s, s.begin():
        user = await queries.upsert_user(s, provider="google", subject=email, email=email,
                                         name=name)
        for key, value in fields.items():
            setattr(user, key, value)
    return user


async def outbox(db) -> list[EmailNotification]:  # noqa: F811
    async with db.session() as s:
        return list((await s.execute(select(EmailNotification)
                                     .order_by(EmailNotification.id))).scalars())


async def queue(db, user: User, template: str, payload: dict, *, key: str,  # noqa: F811
                transactional: bool = False) -> None:
    async with db.session() as s, s.begin():
        await queries.enqueue_email(s, recipient=user.email, template=template, payload=payload,
                                    transactional=transactional, user_id=user.id, key=key)


SUMMARY = {"name": "Ada", "student_name": "Ada", "week": "2026-W47", "minutes": 12.5,
           "questions": 4, "sessions": 2, "topics": ["fractions"], "courses": ["sample"],
           "recipient_role": "student"}


async def test_sign_up_queues_a_welcome_that_arrives_with_both_parts(db, smtp_sink):  # noqa: F811
    user = await new_user(db)
    await new_user(db)  # signing in again queues nothing more
    [row] = await outbox(db)
    assert (row.template, row.status, row.transactional) == ("welcome", "pending", True)
    worker = worker_for(db, smtp(smtp_sink))
    assert await worker.run_once() == 1
    [mail] = smtp_sink.messages
    m = mail.message
    assert mail.rcpt_tos == ["ada@example.com"] and m["From"] == "Tutor <tutor@example.org>"
    assert m["Subject"] and m["Message-ID"] == Email(
        to="", sender="tutor@example.org", subject="", text="", html="",
        idempotency_key=f"welcome:{user.id}").message_id
    assert m.get_content_type() == "multipart/alternative"
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    assert "Ada" in text and "<html" in html.lower()
    assert m["List-Unsubscribe"] is None  # transactional: no unsubscribe
    [row] = await outbox(db)
    assert row.status == "sent" and row.attempts == 1 and row.subject == m["Subject"]
    assert row.provider_message_id and row.sent_at is not None


async def test_non_transactional_mail_has_a_working_unsubscribe_link(db, smtp_sink, fake,  # noqa: F811
                                                                     start_server):
    address = await start_server(make_settings(fake, database_url=db.url, email_worker=False,
                                               email_link_secret=SECRET))
    user = await new_user(db)
    await queue(db, user, "weekly_summary", SUMMARY, key="w1")
    worker = worker_for(db, smtp(smtp_sink))
    await worker.run_once()
    summary = [m.message for m in smtp_sink.messages if m.message["X-Tutor-Template"]
               == "weekly_summary"][0]
    link = summary["List-Unsubscribe"].strip("<>")
    assert summary["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link in summary.get_body(("plain",)).get_content()
    path = urlsplit(link)
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        page = await client.get(f"{path.path}?{path.query}")
        assert page.status_code == 200 and "<form" in page.text  # a scanner's GET changes nothing
        assert (await db_user(db, user.id)).email_unsubscribed_at is None
        forged = await client.post(f"{path.path}?token=x{path.query[7:]}")
        assert forged.status_code == 400
        done = await client.post(f"{path.path}?{path.query}",
                                 content=b"List-Unsubscribe=One-Click")  # RFC 8058
        assert done.status_code == 200
    assert (await db_user(db, user.id)).email_unsubscribed_at is not None
    await queue(db, user, "weekly_summary", SUMMARY, key="w2")
    await queue(db, user, "payment_receipt", {"name": "Ada", "amount": 1500, "currency": "usd",
                                              "tier_label": "Pro", "period_end": None},
                key="r1", transactional=True)
    await worker.run_once()
    rows = {r.idempotency_key: r.status for r in await outbox(db)}
    assert rows["w2"] == "suppressed" and rows["r1"] == "sent"  # receipts still go
    assert [m.message["X-Tutor-Template"] for m in smtp_sink.messages].count("weekly_summary") == 1


async def db_user(db, user_id: str) -> User:  # noqa: F811
    async with db.session() as s:
        return await s.get(User, user_id)


async def test_smtp_down_retries_with_backoff_then_fails_with_the_reason(db, smtp_sink):  # noqa: F811
    await new_user(db)
    smtp_sink.stop()
    worker = worker_for(db, smtp(smtp_sink), max_attempts=3)
    delays = []
    for attempt in range(1, 4):
        assert await worker.run_once() == 1
        [row] = await outbox(db)
        assert row.attempts == attempt and "SMTP server" in row.error
        if attempt < 3:
            assert row.status == "pending"
            wait = (aware(row.next_attempt_at) - worker.clock()).total_seconds()
            delays.append(wait)
            assert await worker.run_once() == 0  # not due yet
            worker.clock_ref.advance(wait + 0.1)
    assert row.status == "failed"
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24  # 10 s, then 20 s (±20 % jitter)
    smtp_sink.start()
    assert await requeue(db, row.id)  # an admin's retry, once SMTP is back
    assert await worker.run_once() == 1
    assert (await outbox(db))[0].status == "sent" and len(smtp_sink.messages) == 1


def aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


async def test_4xx_is_retried_and_5xx_ends_failed_after_a_few_tries(db, smtp_sink):  # noqa: F811
    await new_user(db)
    worker = worker_for(db, smtp(smtp_sink), retry_max_s=0.0)
    smtp_sink.fail_next(1, "451 4.3.0 try later")
    assert await worker.run_once() == 1
    assert (await outbox(db))[0].status == "pending"
    assert await worker.run_once() == 1
    assert (await outbox(db))[0].status == "sent"
    await new_user(db, email="ghost@example.com", name="Ghost")
    smtp_sink.fail_next(5, "550 5.1.1 no such user", stage="rcpt")
    for _ in range(3):
        await worker.run_once()
    ghost = (await outbox(db))[-1]
    assert ghost.status == "failed" and ghost.attempts == 3 and "550" in ghost.error


class CrashAfterSend:
    """The process dies right after the transport accepted the message, before the outbox row
    is updated: the worker's task is cancelled at that exact point."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.idempotent = inner.name, inner.idempotent

    async def send(self, email: Email) -> str:
        await self.inner.send(email)
        raise asyncio.CancelledError

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_crash_between_smtp_send_and_record_does_not_send_twice(db, smtp_sink):  # noqa: F811
    await new_user(db)
    crashed = worker_for(db, CrashAfterSend(smtp(smtp_sink)), lease_s=60)
    with pytest.raises(asyncio.CancelledError):
        await crashed.run_once()
    assert len(smtp_sink.messages) == 1 and (await outbox(db))[0].status == "sending"
    restarted = worker_for(db, smtp(smtp_sink), lease_s=60)
    assert await restarted.run_once() == 0  # within the lease: maybe still being sent
    restarted.clock_ref.advance(61)
    assert await restarted.run_once() == 0
    [row] = await outbox(db)
    assert row.status == "unknown" and "not resent" in row.error
    assert len(smtp_sink.messages) == 1  # plain SMTP cannot dedupe: no second copy


@pytest.fixture
async def mcp_stdio(smtp_sink, tmp_path: Path):  # noqa: F811
    transport = McpEmailTransport(
        command=[sys.executable, "-m", "notify.mcp_server"],
        env={**smtp_sink.env(), "TUTOR_MCP_EMAIL_JOURNAL": str(tmp_path / "journal.db")},
        cwd=str(Path(__file__).resolve().parent.parent), timeout_s=10)
    yield transport
    await transport.aclose()


async def test_through_mcp_a_crash_after_send_is_resent_and_delivered_once(
        db, smtp_sink, mcp_stdio):  # noqa: F811
    await new_user(db)
    crashed = worker_for(db, CrashAfterSend(mcp_stdio), lease_s=60)
    with pytest.raises(asyncio.CancelledError):
        await crashed.run_once()
    restarted = worker_for(db, mcp_stdio, lease_s=60)
    restarted.clock_ref.advance(61)
    assert await restarted.run_once() == 1  # the tool server dedupes: safe to send again
    [row] = await outbox(db)
    assert row.status == "sent" and row.attempts == 2 and row.transport == "mcp"
    [mail] = smtp_sink.messages  # through the tool server's SMTP relay, once
    assert mail.message["Message-ID"] == row.provider_message_id
    assert mail.message.get_body(("html",)) is not None


async def test_mcp_server_gone_retries_then_fails_with_the_reason(db):  # noqa: F811
    await new_user(db)
    gone = McpEmailTransport(url="http://127.0.0.1:9/mcp", timeout_s=2)
    worker = worker_for(db, gone, max_attempts=2, retry_max_s=0.0)
    try:
        await worker.run_once()
        await worker.run_once()
    finally:
        await gone.aclose()
    [row] = await outbox(db)
    assert row.status == "failed" and row.attempts == 2 and row.error


async def test_workers_in_parallel_send_each_message_once(db, smtp_sink):  # noqa: F811
    # On PostgreSQL the claims use FOR UPDATE SKIP LOCKED; on SQLite, writes are serialised.
    users = [await new_user(db, email=f"s{i}@example.com", name=f"S{i}") for i in range(30)]
    assert len(await outbox(db)) == len(users)
    smtp_sink.delay_s = 0.01  # sends overlap
    workers = [worker_for(db, smtp(smtp_sink), batch=4) for _ in range(3)]

    async def drain(w: OutboxWorker) -> None:
        while await w.run_once():
            pass

    await asyncio.gather(*(drain(w) for w in workers))
    rows = await outbox(db)
    assert {r.status for r in rows} == {"sent"} and {r.attempts for r in rows} == {1}
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == sorted(u.email for u in users)
    assert sum(w.sent for w in workers) == 30
    if db.url.startswith("postgresql"):
        assert all(w.sent for w in workers)  # SKIP LOCKED: they shared the work


async def test_weekly_summaries_from_interactions(db):  # noqa: F811
    ada = await new_user(db, guardian_email="parent@example.com")
    bob = await new_user(db, email="bob@example.com", name="Bob")
    idle = await new_user(db, email="idle@example.com", name="Idle")
    start, label = last_full_week(datetime(2026, 11, 25, 12, tzinfo=timezone.utc))
    assert label == "2026-W47" and start == datetime(2026, 11, 16, tzinfo=timezone.utc)
    inside = start + timedelta(days=2)
    async with db.session() as s, s.begin():
        for i, (q, secs) in enumerate([("How do I add fractions with unlike denominators?", 6.0),
                                       ("Why do fractions need a common denominator?", 4.5),
                                       ("What is photosynthesis?", 3.0)]):
            s.add(Interaction(session_id=f"sess{i // 2}", user_id=ada.id, course="sample",
                              kind="voice", transcript=q, answer="...", audio_seconds=secs,
                              created_at=inside))
        s.add(Interaction(session_id="t", user_id=bob.id, kind="text", transcript="Hi",
                          answer="...", created_at=inside))
        s.add(Interaction(session_id="old", user_id=idle.id, kind="text", transcript="old",
                          answer="...", created_at=start - timedelta(days=1)))
    await db_set(db, bob.id, weekly_summary=False)
    assert await queue_weekly_summaries(db, start) == 2
    assert await queue_weekly_summaries(db, start) == 0  # once per week and recipient
    rows = [r for r in await outbox(db) if r.template == "weekly_summary"]
    by_role = {r.payload["recipient_role"]: r for r in rows}
    assert {r.recipient for r in rows} == {"ada@example.com", "parent@example.com"}
    p = by_role["student"].payload
    assert (p["questions"], p["sessions"], p["minutes"], p["courses"], p["week"]) == (
        3, 2, 0.2, ["sample"], "2026-W47")
    assert p["topics"][0] == "fractions" and "denominator" in " ".join(p["topics"])
    assert by_role["guardian"].payload["student_name"] == "Ada"
    rendered = Renderer().render("weekly_summary", by_role["guardian"].payload)
    assert "Ada" in rendered.text and "fractions" in rendered.text
    assert topics(["the the the cat"]) == ["cat"]


async def db_set(db, user_id: str, **values) -> None:  # noqa: F811
    async with db.session() as s, s.begin():
        await s.execute(update(User).where(User.id == user_id).values(**values))


async def test_teachers_write_to_their_classes_and_users_see_what_they_got(
        fake, start_server, tmp_path, smtp_sink):  # noqa: F811
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    address = await start_server(make_settings(
        fake, database_url=url, supabase_jwt_secret="s" * 32, email_transport="smtp",
        smtp_host=smtp_sink.host, smtp_port=smtp_sink.port, smtp_starttls=False,
        email_poll_s=0.05))
    app = start_server.apps[-1]
    db = app.state.services.db  # noqa: F811

    async def caller(email: str, role: str) -> tuple[User, dict[str, str]]:
        async with db.session() as s, s.begin():
            user = await queries.upsert_user(s, provider="google", subject=email, email=email,
                                             name=email.split("@")[0], role=role)
            token, _ = await queries.issue_api_token(s, user.id)
        return user, {"Authorization": f"Bearer {token}"}

    teacher, t_auth = await caller("teach@example.com", "teacher")
    admin, a_auth = await caller("admin@example.com", "admin")
    s1, s1_auth = await caller("s1@example.com", "student")
    s2, _ = await caller("s2@example.com", "student")
    outsider, _ = await caller("out@example.com", "student")
    async with db.session() as s, s.begin():
        room = await queries.create_class(s, teacher.id, "Algebra 1")
        for student in (s1, s2):
            s.add(ClassMember(class_id=room.id, user_id=student.id))
    await db_set(db, s2.id, email_unsubscribed_at=datetime.now(timezone.utc))
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        sent = await client.post("/api/email/send", headers=t_auth, json={
            "class_id": room.id, "subject": "Quiz on Friday",
            "body": "Revise chapter 3.\n<b>Bring a pencil</b>"})
        assert sent.status_code == 202
        assert sent.json() == {"queued": 1, "skipped": {"no_email": 0, "unsubscribed": 1}}
        assert (await client.post("/api/email/send", headers=t_auth, json={
            "user_ids": [outsider.id], "subject": "x", "body": "y"})).status_code == 403
        assert (await client.post("/api/email/send", headers=s1_auth, json={
            "class_id": room.id, "subject": "x", "body": "y"})).status_code == 403
        assert (await client.post("/api/email/send", headers=t_auth, json={
            "subject": "x", "body": "y"})).status_code == 400
        messages = await smtp_sink.until(6)  # five welcomes, one class message
        note = [m.message for m in messages if m.message["X-Tutor-Template"] == "teacher_message"]
        assert [m["To"] for m in note] == ["s1@example.com"]
        assert "&lt;b&gt;Bring a pencil&lt;/b&gt;" in note[0].get_body(("html",)).get_content()
        assert "<b>Bring a pencil</b>" in note[0].get_body(("plain",)).get_content()
        for _ in range(100):  # the worker records the last send just after the sink has it
            mine = (await client.get("/api/email/notifications", headers=s1_auth)).json()
            if len(mine["notifications"]) == 2:
                break
            await asyncio.sleep(0.05)
        assert {n["template"] for n in mine["notifications"]} == {"welcome", "teacher_message"}
        assert "error" not in mine["notifications"][0]
        everything = (await client.get("/api/email/notifications", headers=a_auth)).json()
        assert len(everything["notifications"]) == 6
        assert all(n["status"] == "sent" for n in everything["notifications"])
        prefs = await client.put("/api/email/preferences", headers=s1_auth,
                                 json={"guardian_email": "mum@example.com", "language": "fr"})
        assert prefs.json()["guardian_email"] == "mum@example.com"
        assert (await client.put("/api/email/preferences", headers=s1_auth,
                                 json={"guardian_email": "nope"})).status_code == 400


async def test_voice_quota_notices_at_80_and_100_percent_once_a_day(db):  # noqa: F811
    from billing.quota import MemoryQuotas
    from billing.ratelimit import RequestLimiter, storage_for
    from billing.service import Billing
    from billing.tiers import TierCatalog
    from notify.events import quota_notifier

    billing = Billing(db, TierCatalog.load(), MemoryQuotas(), RequestLimiter(storage_for(None)))
    billing.on_voice_threshold = quota_notifier(db, upgrade_url="http://tutor.test/?upgrade=1")
    user = await new_user(db)
    other = await new_user(db, email="quiet@example.com", name="Quiet",
                           email_unsubscribed_at=datetime.now(timezone.utc))
    free = billing.catalog.get("free")  # 10 minutes a day
    for ms in (7 * 60_000, 60_000, 60_000, 60_000, 30_000):  # 70 %, 80 %, 90 %, 100 %, 105 %
        await billing.charge_voice(user.id, "sess", free, ms)
        await billing.charge_voice(other.id, "sess", free, ms)
    rows = [r for r in await outbox(db) if r.template.startswith("quota")]
    assert [(r.template, r.recipient) for r in rows] == [
        ("quota_warning", "ada@example.com"), ("quota_exhausted", "ada@example.com")]
    assert rows[0].payload["percent"] == 80 and rows[0].payload["used_minutes"] == 8.0
    assert rows[1].payload["period"] == "day" and rows[1].transactional is False
    for row in rows:
        Renderer().render(row.template, row.payload, unsubscribe_url="http://x/u")


async def test_the_server_mails_through_its_own_mcp_tool_server(fake, start_server, tmp_path,
                                                               smtp_sink, monkeypatch):  # noqa: F811
    # TUTOR_EMAIL_TRANSPORT=mcp with TUTOR_EMAIL_MCP_COMMAND="tutor mcp-email": the server spawns
    # the tool server over stdio, which relays to SMTP (its TUTOR_SMTP_* come from our env).
    for key, value in smtp_sink.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TUTOR_MCP_EMAIL_JOURNAL", str(tmp_path / "journal.db"))
    await start_server(make_settings(
        fake, database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db", email_transport="mcp",
        email_mcp_command=f"{sys.executable} -m notify.mcp_server", email_poll_s=0.05))
    app = start_server.apps[-1]
    user = await new_user(app.state.services.db, email="grace@example.com", name="Grace")
    [mail] = await smtp_sink.until(1, timeout_s=15)
    assert mail.rcpt_tos == ["grace@example.com"] and "Grace" in mail.message.get_body(
        ("plain",)).get_content()
    for _ in range(100):
        [row] = await outbox(app.state.services.db)
        if row.status == "sent":
            break
        await asyncio.sleep(0.05)
    assert row.status == "sent" and row.transport == "mcp" and row.user_id == user.id
