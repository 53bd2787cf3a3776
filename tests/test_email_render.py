"""Email templates (`notify.render`) and unsubscribe tokens (`notify.unsubscribe`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jinja2
import pytest
from itsdangerous import URLSafeSerializer
from markupsafe import escape

from notify.render import (OPTIONAL, TEMPLATES, Renderer, Rendered, format_date, format_datetime,
                           format_list, format_minutes, format_money, format_number,
                           format_percent, week_start)
from notify.unsubscribe import SALT, make_token, read_token, unsubscribe_url

NBSP = "\u00a0"
LINK = "https://tutor.example/api/email/unsubscribe?token=abc.def&x=1"

PAYLOADS: dict[str, dict] = {
    "welcome": {"name": "Ana"},
    "payment_receipt": {"name": "Ana", "amount": 1500, "currency": "usd", "tier_label": "Pro",
                        "period_end": "2026-12-01",
                        "invoice_url": "https://invoice.stripe.com/i/acct_1/inv_2"},
    "payment_failed": {"name": "Ana", "amount": 2500, "currency": "eur", "tier_label": "Pro",
                       "grace_until": "2026-12-08",
                       "portal_hint": "https://tutor.example/billing"},
    "quota_warning": {"name": "Ana", "percent": 80, "used_minutes": 8.0, "limit_minutes": 10.0,
                      "period": "day", "tier_label": "Free",
                      "upgrade_url": "https://tutor.example/plans"},
    "quota_exhausted": {"name": "Ana", "limit_minutes": 100.0, "period": "month",
                        "resets_at": "2026-12-01T00:00:00+00:00", "tier_label": "Free",
                        "upgrade_url": "https://tutor.example/plans"},
    "weekly_summary": {"name": "Ana", "student_name": "Ana", "week": "2026-W47", "minutes": 42.5,
                       "questions": 18, "sessions": 5,
                       "topics": ["fractions", "photosynthesis", "linear equations"],
                       "courses": ["Algebra 1", "Biology"], "recipient_role": "student"},
    "teacher_message": {"name": "Ana", "teacher_name": "Ms. Rivera", "class_name": "Algebra 1",
                        "subject_line": "Homework for Friday",
                        "body": "Hi all,\n\nPlease finish exercise 4 before Friday.\nThanks!"},
    "class_invitation": {"name": "Ana", "teacher_name": "Ms. Rivera", "class_name": "Algebra 1",
                         "join_code": "K7QFM2XP", "join_url": "https://tutor.example/"},
    "role_invitation": {"name": "Ana", "inviter_name": "Ms. Rivera", "role": "teacher",
                        "accept_url": "https://tutor.example/api/invitations/accept?token=t0k&x=1",
                        "expires_at": "2026-12-17T09:30:00+00:00"},
    "moderation_alert": {"name": "Ms. Rivera", "student_name": "Ana", "course": "Algebra 1",
                         "categories": ["self-harm", "self-harm/intent"]},
}

# What each rendering must show (in subject + text, and in the HTML), per language.
EXPECTED: dict[str, dict[str, list[str]]] = {
    "welcome": {"en": ["Ana", "Welcome"], "fr": ["Ana", "Bienvenue"]},
    "payment_receipt": {
        "en": ["Ana", "$15.00", "Pro", "December 1, 2026",
               "https://invoice.stripe.com/i/acct_1/inv_2"],
        "fr": ["Ana", f"15,00{NBSP}USD", "Pro", "1er décembre 2026",
               "https://invoice.stripe.com/i/acct_1/inv_2"]},
    "payment_failed": {
        "en": ["Ana", "25.00 EUR", "Pro", "December 8, 2026", "https://tutor.example/billing"],
        "fr": ["Ana", f"25,00{NBSP}EUR", "Pro", "8 décembre 2026",
               "https://tutor.example/billing"]},
    "quota_warning": {
        "en": ["Ana", "80%", "8 minutes", "10 minutes", "today", "Free",
               "https://tutor.example/plans"],
        "fr": ["Ana", f"80{NBSP}%", f"8{NBSP}minutes", f"10{NBSP}minutes", "aujourd'hui", "Free",
               "https://tutor.example/plans"]},
    "quota_exhausted": {
        "en": ["Ana", "100 minutes", "this month", "December 1, 2026 at 00:00 UTC", "Free",
               "https://tutor.example/plans"],
        "fr": ["Ana", f"100{NBSP}minutes", "ce mois-ci", "1er décembre 2026 à 00:00 UTC", "Free",
               "https://tutor.example/plans"]},
    "weekly_summary": {
        "en": ["Ana", "November 16, 2026", "42.5 minutes", "18", "5", "Algebra 1 and Biology",
               "fractions, photosynthesis, and linear equations"],
        "fr": ["Ana", "16 novembre 2026", f"42,5{NBSP}minutes", "18", "5",
               "Algebra 1 et Biology", "fractions, photosynthesis et linear equations"]},
    "teacher_message": {
        "en": ["Ana", "Ms. Rivera", "Algebra 1", "Homework for Friday",
               "Please finish exercise 4 before Friday."],
        "fr": ["Ana", "Ms. Rivera", "Algebra 1", "Homework for Friday",
               "Please finish exercise 4 before Friday."]},
    "class_invitation": {
        "en": ["Ana", "Ms. Rivera", "Algebra 1", "K7QFM2XP", "https://tutor.example/"],
        "fr": ["Ana", "Ms. Rivera", "Algebra 1", "K7QFM2XP", "https://tutor.example/"]},
    "role_invitation": {
        "en": ["Ana", "Ms. Rivera", "a teacher", "December 17, 2026 at 09:30 UTC",
               "https://tutor.example/api/invitations/accept?token=t0k&x=1"],
        "fr": ["Ana", "Ms. Rivera", "enseignant", "17 décembre 2026 à 09:30 UTC",
               "https://tutor.example/api/invitations/accept?token=t0k&x=1"]},
    "moderation_alert": {
        "en": ["Ms. Rivera", "Ana", "Algebra 1", "self-harm, self-harm/intent"],
        "fr": ["Ms. Rivera", "Ana", "Algebra 1", "self-harm, self-harm/intent"]},
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def test_every_template_has_a_payload_and_exists_in_every_language(renderer: Renderer) -> None:
    assert set(PAYLOADS) == set(TEMPLATES) == set(EXPECTED)
    assert renderer.languages == ("en", "fr")
    for language in renderer.languages:
        for name in TEMPLATES:
            assert (renderer.directory / language / f"{name}.j2").is_file()


@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_renders(renderer: Renderer, template: str, language: str) -> None:
    out = renderer.render(template, PAYLOADS[template], language=language, unsubscribe_url=LINK)
    assert isinstance(out, Rendered)
    assert out.subject and "\n" not in out.subject and out.subject == out.subject.strip()
    assert out.text and out.html
    assert "\n\n\n" not in out.text and out.text == out.text.strip()
    assert all(line == line.rstrip() for line in out.text.splitlines())
    assert out.html.startswith("<!DOCTYPE html>") and f'<html lang="{language}">' in out.html
    for value in EXPECTED[template][language]:
        assert value in out.subject + "\n" + out.text, (template, language, value)
        assert str(escape(value)) in out.html, (template, language, value)
    name = PAYLOADS[template]["name"]
    assert out.text.startswith({"en": f"Hi {name},", "fr": f"Bonjour {name},"}[language])


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_unsubscribe_link_only_in_non_transactional_mail(renderer: Renderer,
                                                         template: str) -> None:
    transactional = TEMPLATES[template]
    for language in ("en", "fr"):
        given = renderer.render(template, PAYLOADS[template], language=language,
                                unsubscribe_url=LINK)
        assert (LINK in given.text) is not transactional
        assert (given.text.rstrip().endswith(LINK)) is not transactional  # the last line
        escaped = LINK.replace("&", "&amp;")
        assert (f'href="{escaped}"' in given.html) is not transactional
        assert LINK not in given.html  # only ever escaped in HTML
        none = renderer.render(template, PAYLOADS[template], language=language)
        assert "unsubscribe" not in none.text.lower() and "désabonner" not in none.text
        assert "unsubscribe" not in none.html.lower() and "désabonner" not in none.html
    assert TEMPLATES == {"welcome": True, "payment_receipt": True, "payment_failed": True,
                         "quota_warning": False, "quota_exhausted": False,
                         "weekly_summary": False, "teacher_message": False,
                         "class_invitation": True, "role_invitation": True,
                         "moderation_alert": True}


@pytest.mark.parametrize("language", ["en", "fr"])
def test_teacher_body_is_escaped_in_html_and_verbatim_in_text(renderer: Renderer,
                                                              language: str) -> None:
    body = 'Read <script>alert("x")</script> & chapter 3 <b>now</b>.\nLine two\n\nLine four'
    payload = {**PAYLOADS["teacher_message"], "body": body, "subject_line": "Tom & <Jerry>",
               "teacher_name": "O'Brien <admin>"}
    out = renderer.render("teacher_message", payload, language=language, unsubscribe_url=LINK)
    assert body in out.text  # plain text: exactly as written
    assert "Tom & <Jerry>" in out.subject and "&amp;" not in out.subject + out.text
    assert "O'Brien <admin>" in out.subject
    assert "<script>" not in out.html and "<b>now" not in out.html
    assert ("Read &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; chapter 3 "
            "&lt;b&gt;now&lt;/b&gt;.<br>\nLine two<br>\n<br>\nLine four") in out.html
    assert "Tom &amp; &lt;Jerry&gt;" in out.html and "<Jerry>" not in out.html
    assert "O&#39;Brien &lt;admin&gt;" in out.html


def test_subject_is_one_line_and_keeps_no_break_spaces(renderer: Renderer) -> None:
    fr = renderer.render("payment_receipt", PAYLOADS["payment_receipt"], language="fr")
    assert fr.subject == f"Votre reçu : 15,00{NBSP}USD pour la formule Pro"
    injected = "Hello\r\nBcc: x@example.com\u2028 !"
    out = renderer.render("teacher_message", {**PAYLOADS["teacher_message"],
                                              "subject_line": injected})
    assert out.subject == "Ms. Rivera (Algebra 1): Hello Bcc: x@example.com !"


def test_every_payload_value_is_escaped_in_html(renderer: Renderer) -> None:
    payload = {**PAYLOADS["payment_receipt"], "name": "<i>Ana</i>", "tier_label": "A&B"}
    out = renderer.render("payment_receipt", payload)
    assert "<i>Ana</i>" in out.text and "A&B" in out.text and "A&B" in out.subject
    assert "&lt;i&gt;Ana&lt;/i&gt;" in out.html and "<i>" not in out.html
    assert "A&amp;B" in out.html and "A&B" not in out.html


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_missing_required_field_raises(renderer: Renderer, template: str) -> None:
    required = [k for k in PAYLOADS[template] if k not in OPTIONAL.get(template, ())]
    assert required
    for field in required:
        payload = {k: v for k, v in PAYLOADS[template].items() if k != field}
        with pytest.raises(jinja2.UndefinedError):
            renderer.render(template, payload)


@pytest.mark.parametrize("template", sorted(OPTIONAL))
def test_optional_fields_may_be_left_out_or_none(renderer: Renderer, template: str) -> None:
    for language in ("en", "fr"):
        bare = {k: v for k, v in PAYLOADS[template].items() if k not in OPTIONAL[template]}
        out = renderer.render(template, bare, language=language)
        assert out.subject and out.text and out.html
        for field in OPTIONAL[template]:
            assert str(PAYLOADS[template][field]) not in out.text + out.html
        nones = renderer.render(template, {**bare, **dict.fromkeys(OPTIONAL[template])},
                                language=language)
        assert nones == out


def test_nullable_dates_and_empty_names(renderer: Renderer) -> None:
    receipt = renderer.render("payment_receipt", {**PAYLOADS["payment_receipt"], "name": "",
                                                  "period_end": None})
    assert receipt.text.startswith("Hi there,") and "Paid through" not in receipt.text
    failed = renderer.render("payment_failed", {**PAYLOADS["payment_failed"], "grace_until": None,
                                                "portal_hint": "Open Account, then Billing"},
                             language="fr")
    assert failed.text.startswith("Bonjour Ana,") and "jusqu'au" not in failed.text
    assert "Open Account, then Billing" in failed.text + failed.html
    teacher = renderer.render("teacher_message", {**PAYLOADS["teacher_message"],
                                                  "teacher_name": "", "class_name": None})
    assert teacher.subject == "Your teacher: Homework for Friday"


def test_weekly_summary_for_a_guardian_is_about_the_student(renderer: Renderer) -> None:
    payload = {**PAYLOADS["weekly_summary"], "name": "", "recipient_role": "guardian"}
    en = renderer.render("weekly_summary", payload, unsubscribe_url=LINK)
    assert en.subject.startswith("Ana's week")
    assert en.text.startswith("Hello,") and "how Ana got on" in en.text
    assert "parent or teacher" in en.text and "your week" not in en.text.lower()
    fr = renderer.render("weekly_summary", payload, language="fr", unsubscribe_url=LINK)
    assert "pour Ana" in fr.subject and "vous" in fr.text.lower() and "ton tuteur" not in fr.text
    student = renderer.render("weekly_summary", PAYLOADS["weekly_summary"], language="fr")
    assert "Ton bilan" in student.subject and "ton tuteur" in student.text
    nameless = renderer.render("weekly_summary", {**payload, "student_name": ""})
    assert "your student" in nameless.text


@pytest.mark.parametrize("template,field,value", [
    ("quota_warning", "period", "week"),
    ("quota_exhausted", "period", "year"),
    ("weekly_summary", "recipient_role", "parent"),
])
def test_values_outside_their_choices_raise(renderer: Renderer, template: str, field: str,
                                            value: str) -> None:
    with pytest.raises(jinja2.UndefinedError):
        renderer.render(template, {**PAYLOADS[template], field: value})


def test_bad_values_raise(renderer: Renderer) -> None:
    with pytest.raises(TypeError):
        renderer.render("payment_receipt", {**PAYLOADS["payment_receipt"], "amount": 15.0})
    with pytest.raises(ValueError):
        renderer.render("weekly_summary", {**PAYLOADS["weekly_summary"], "week": "last week"})
    with pytest.raises(ValueError):
        renderer.render("quota_exhausted", {**PAYLOADS["quota_exhausted"], "resets_at": "soon"})


def test_unknown_template(renderer: Renderer) -> None:
    with pytest.raises(KeyError, match="unknown email template 'newsletter'"):
        renderer.render("newsletter", {})


@pytest.mark.parametrize("requested,used", [
    ("fr", "fr"), ("fr-CA", "fr"), ("fr_BE", "fr"), ("FR", "fr"), ("de", "en"), ("de-DE", "en"),
    ("en-GB", "en"), (None, "en"), ("", "en"), ("../fr", "en"), ("fr/../../x", "en"),
])
def test_language_fallback(renderer: Renderer, requested: str | None, used: str) -> None:
    assert renderer.language_for("welcome", requested) == used
    out = renderer.render("welcome", {"name": "Ana"}, language=requested)
    assert out.text.startswith({"en": "Hi Ana,", "fr": "Bonjour Ana,"}[used])


def test_default_language_and_partial_translations(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "notify" / "templates"
    shutil.copytree(root, tmp_path / "templates")
    (tmp_path / "templates" / "de").mkdir()
    (tmp_path / "templates" / "de" / "welcome.j2").write_text(
        "{% block subject %}Willkommen, {{ name }}!{% endblock %}"
        "{% block text %}Hallo {{ name }},\n\n\n\nschön, dass du da bist.{% endblock %}"
        "{% block html %}<p>Hallo {{ name }}</p>{% endblock %}")
    r = Renderer(tmp_path / "templates", default_language="fr")
    assert r.languages == ("de", "en", "fr")
    de = r.render("welcome", {"name": "<Jan>"}, language="de-AT")
    assert de == Rendered(subject="Willkommen, <Jan>!",
                          text="Hallo <Jan>,\n\nschön, dass du da bist.",
                          html="<p>Hallo &lt;Jan&gt;</p>")
    # no German receipt: the default language, French, not English
    assert r.language_for("payment_receipt", "de") == "fr"
    assert r.render("payment_receipt", PAYLOADS["payment_receipt"], language="de") \
        .subject.startswith("Votre reçu")
    with pytest.raises(ValueError, match="default language"):
        Renderer(tmp_path / "templates", default_language="es")


def test_transactional_mail_ignores_an_unsubscribe_url(renderer: Renderer) -> None:
    with_link = renderer.render("payment_failed", PAYLOADS["payment_failed"], unsubscribe_url=LINK)
    assert with_link == renderer.render("payment_failed", PAYLOADS["payment_failed"])


@pytest.mark.parametrize("amount,currency,language,expected", [
    (1500, "usd", "en", "$15.00"),
    (1500, "USD", "en", "$15.00"),
    (123456, "usd", "en", "$1,234.56"),
    (5, "usd", "en", "$0.05"),
    (0, "usd", "en", "$0.00"),
    (-250, "usd", "en", "-$2.50"),
    (1500, "eur", "en", "15.00 EUR"),
    (1500, "gbp", "en", "15.00 GBP"),
    (1500, "jpy", "en", "1,500 JPY"),
    (1500, "kwd", "en", "1.500 KWD"),
    (1500, "usd", "fr", f"15,00{NBSP}USD"),
    (123456789, "eur", "fr", f"1\u202f234\u202f567,89{NBSP}EUR"),
    (1500, "usd", "fr-CA", f"15,00{NBSP}USD"),
    (1500, "usd", "de", "$15.00"),  # no rules for German here: formatted like English
])
def test_money(amount: int, currency: str, language: str, expected: str) -> None:
    assert format_money(amount, currency, language) == expected


def test_money_refuses_what_is_not_an_amount() -> None:
    for amount in (15.0, "1500", True, None):
        with pytest.raises(TypeError):
            format_money(amount, "usd")  # type: ignore[arg-type]
    for currency in ("us", "dollars", "", "u$d"):
        with pytest.raises(ValueError):
            format_money(1500, currency)


def test_other_formats() -> None:
    assert format_minutes(1, "en") == "1 minute"
    assert format_minutes(0, "en") == "0 minutes"
    assert format_minutes(12.5, "en") == "12.5 minutes"
    assert format_minutes(12.04, "en") == "12 minutes"
    assert format_minutes(1.5, "fr") == f"1,5{NBSP}minute"
    assert format_minutes(2, "fr") == f"2{NBSP}minutes"
    assert format_minutes(3000, "en") == "3,000 minutes"
    assert format_number(12345, "fr") == "12\u202f345"
    assert format_percent(80, "en") == "80%" and format_percent(80, "fr") == f"80{NBSP}%"
    assert format_date("2026-12-01", "en") == "December 1, 2026"
    assert format_date("2026-12-01", "fr") == "1er décembre 2026"
    assert format_date("2026-08-15", "fr") == "15 août 2026"
    assert format_datetime("2026-11-21T01:30:00+01:00", "en") == "November 21, 2026 at 00:30 UTC"
    assert format_datetime("2026-11-21T00:00:00Z", "fr") == "21 novembre 2026 à 00:00 UTC"
    assert format_datetime("2026-11-21T08:00:00", "en") == "November 21, 2026 at 08:00 UTC"
    assert str(week_start("2026-W47")) == "2026-11-16"
    assert str(week_start("2027-W01")) == "2027-01-04"
    assert format_list([], "en") == "" and format_list(["a"], "en") == "a"
    assert format_list(["a", "b"], "en") == "a and b"
    assert format_list(["a", "b", "c"], "en") == "a, b, and c"
    assert format_list(["a", "b", "c"], "fr") == "a, b et c"


def test_tokens_round_trip() -> None:
    token = make_token("s3cret", "user-42")
    assert read_token("s3cret", token) == "user-42"
    assert make_token("s3cret", "user-42") == token  # deterministic, never expires
    assert read_token("s3cret", make_token("s3cret", "é€")) == "é€"


def test_forged_and_garbled_tokens_read_as_none() -> None:
    token = make_token("s3cret", "user-42")
    assert read_token("other-secret", token) is None  # signed with another secret
    body, _, signature = token.rpartition(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert read_token("s3cret", f"{body}.{flipped}") is None  # signature altered
    other_body = make_token("s3cret", "user-43").rpartition(".")[0]
    assert read_token("s3cret", f"{other_body}.{signature}") is None  # payload swapped
    for garbled in ("", "garbage", "a.b.c", token[:-3], token + "x", "." * 10, "%" * 5000):
        assert read_token("s3cret", garbled) is None
    assert read_token("s3cret", None) is None  # type: ignore[arg-type]
    assert read_token("", token) is None
    # Same secret, another purpose (salt): not an unsubscribe token.
    assert read_token("s3cret", URLSafeSerializer("s3cret", salt="session").dumps("user-42")) \
        is None
    assert read_token("s3cret", URLSafeSerializer("s3cret", salt=SALT).dumps(["user-42"])) is None
    with pytest.raises(ValueError):
        make_token("", "user-42")


def test_unsubscribe_url() -> None:
    for base in ("https://tutor.example", "https://tutor.example/"):
        url = unsubscribe_url(base, "s3cret", "user-42")
        assert url.startswith("https://tutor.example/api/email/unsubscribe?token=")
        parts = urlsplit(url)
        assert parts.path == "/api/email/unsubscribe"
        assert read_token("s3cret", parse_qs(parts.query)["token"][0]) == "user-42"
    assert unsubscribe_url("http://127.0.0.1:8000", "k", "u1") == \
        f"http://127.0.0.1:8000/api/email/unsubscribe?token={make_token('k', 'u1')}"


def test_rendered_unsubscribe_url_survives_html_escaping(renderer: Renderer) -> None:
    url = unsubscribe_url("https://tutor.example", "s3cret", "user-42")
    out = renderer.render("quota_warning", PAYLOADS["quota_warning"], unsubscribe_url=url)
    assert url in out.text and f'href="{url}"' in out.html  # the token needs no escaping
