"""Turns a template name and a payload into an email's subject, plain text and HTML.

Files: `templates/<language>/<name>.j2`, one per message per language, each defining three
blocks, `subject`, `text` and `html`, rendered one at a time (`Template.blocks[...]`), never the
file as a whole. `<language>/_layout.j2` holds that language's shared pieces (greeting, sign-off,
unsubscribe line, the HTML page around the content); the page itself, language-neutral, is
`_base/layout.j2`. Directories whose name starts with `_` are not languages.

Escaping, and why two environments: subject and text are rendered by an environment with
autoescape off, the HTML block by one with autoescape on (`select_autoescape`), both loading the
same files. Autoescape is decided when a template is compiled, for the whole file, so a single
environment would escape the text block too ("Tom &amp; Jerry" in a plain-text mail) unless every
subject and text block of every template, now and later, were wrapped in
`{% autoescape false %}`; forgetting it once fails silently. With two environments the output
format alone decides and no template can get it wrong, at the cost of compiling each file twice
(both cached). In the HTML block every value is escaped unless it is `Markup`: macros' output,
and the `nl2br` filter, which escapes first and then adds `<br>`.

Language: the requested tag exactly ("fr"), then its primary subtag ("fr-CA" → "fr"), then the
default language; the first that has the template wins. The filters format numbers, money and
dates in the language the template is rendered in (the context variable `language`); a language
without rules of its own here is formatted like English.

Payloads: a missing field raises (`StrictUndefined`), except the optional fields of `OPTIONAL`,
which default to None. `unsubscribe_url` is only ever given to non-transactional templates (it is
None for transactional ones, whatever the caller passes); the layouts print the unsubscribe line
and link when it is set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import (Environment, FileSystemLoader, StrictUndefined, Template, TemplateNotFound,
                    Undefined, UndefinedError, pass_context, select_autoescape)
from jinja2.runtime import Context
from markupsafe import Markup, escape

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# name → transactional (sent whatever the user's mail preferences; no unsubscribe link)
TEMPLATES: dict[str, bool] = {
    "welcome": True,
    "payment_receipt": True,
    "payment_failed": True,
    "quota_warning": False,
    "quota_exhausted": False,
    "weekly_summary": False,
    "teacher_message": False,
    "class_invitation": True,
    "role_invitation": True,
    "moderation_alert": True,
}

# Fields a payload may leave out (they default to None). Every other field a template uses must
# be present; fields documented as "or None" (period_end, grace_until) must be present, maybe None.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "payment_receipt": ("invoice_url",),
    "payment_failed": ("portal_hint",),
    "quota_warning": ("upgrade_url",),
    "quota_exhausted": ("upgrade_url",),
    "teacher_message": ("class_name",),
    "class_invitation": ("name",),
    "role_invitation": ("name",),
    "moderation_alert": ("course",),
}

_TAG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")
# Spaces and line breaks (not the no-break spaces of French formatting): one space in a subject.
_SPACES = re.compile(r"[ \t\n\r\f\v\x1c-\x1f\x85\u2028\u2029]+")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class Renderer:
    def __init__(self, directory: Path | None = None, default_language: str = "en") -> None:
        self.directory = Path(directory) if directory is not None else TEMPLATES_DIR
        self._languages = tuple(sorted(
            p.name for p in self.directory.iterdir()
            if p.is_dir() and not p.name.startswith(("_", "."))))
        self.default_language = _normalise(default_language) or ""
        if self.default_language not in self._languages:
            raise ValueError(f"default language {default_language!r} has no templates in "
                             f"{self.directory} (languages: {', '.join(self._languages)})")
        common: dict[str, Any] = dict(loader=FileSystemLoader(self.directory),
                                      undefined=StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True)
        self._text_env = Environment(autoescape=False, **common)
        self._html_env = Environment(
            autoescape=select_autoescape(enabled_extensions=("j2", "html"), default=True,
                                         default_for_string=True),
            **common)
        for env in (self._text_env, self._html_env):
            env.filters.update(FILTERS)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with templates, sorted (e.g. ("en", "fr"))."""
        return self._languages

    def language_for(self, template: str, language: str | None) -> str:
        """The language `render` uses for this template and requested language."""
        _check_name(template)
        tried = []
        tag = _normalise(language)
        for candidate in (tag, tag.partition("-")[0] if tag else None, self.default_language):
            if candidate and candidate not in tried:
                tried.append(candidate)
                if (candidate in self._languages
                        and (self.directory / candidate / f"{template}.j2").is_file()):
                    return candidate
        raise TemplateNotFound(f"{template}.j2 (looked in: {', '.join(tried)} under "
                               f"{self.directory})")

    def render(self, template: str, payload: Mapping[str, Any], *, language: str | None = None,
               unsubscribe_url: str | None = None) -> Rendered:
        transactional = _check_name(template)
        lang = self.language_for(template, language)
        name = f"{lang}/{template}.j2"
        context = {field: None for field in OPTIONAL.get(template, ())}
        context.update(payload)
        context["language"] = lang
        context["unsubscribe_url"] = None if transactional else (unsubscribe_url or None)
        subject = _block(self._text_env, name, "subject", context)
        text = _block(self._text_env, name, "text", context)
        html = _block(self._html_env, name, "html", context)
        return Rendered(subject=_SPACES.sub(" ", subject).strip(), text=_tidy(text),
                        html=html.strip())


def _check_name(template: str) -> bool:
    try:
        return TEMPLATES[template]
    except (KeyError, TypeError):
        raise KeyError(f"unknown email template {template!r} "
                       f"(known: {', '.join(TEMPLATES)})") from None


def _normalise(language: str | None) -> str | None:
    """"fr_CA" → "fr-ca"; anything that is not a plausible language tag → None (the tag names a
    directory, so nothing else may get through)."""
    if not isinstance(language, str) or not language:
        return None
    tag = language.strip().replace("_", "-").lower()
    return tag if _TAG.fullmatch(tag) else None


def _block(env: Environment, name: str, block: str, context: dict[str, Any]) -> str:
    template: Template = env.get_template(name)
    try:
        render = template.blocks[block]
    except KeyError:
        raise LookupError(f"email template {name} has no {{% block {block} %}}") from None
    try:
        return "".join(render(template.new_context(context)))
    except Exception:
        env.handle_exception()  # re-raises, the traceback pointing at the template's lines


def _tidy(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, none at either end."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# -- formatting, per language --------------------------------------------------------------------

@dataclass(frozen=True)
class Locale:
    decimal: str
    group: str  # thousands separator
    unit_space: str  # between a number and its unit or currency code
    percent_space: str
    months: tuple[str, ...]
    first_day: str  # how the 1st of a month is written
    date: str  # format of a date: {day} {month} {year}
    at: str  # joins a date and a time
    list_and: str
    oxford_comma: bool


LOCALES: dict[str, Locale] = {
    "en": Locale(decimal=".", group=",", unit_space=" ", percent_space="", first_day="1",
                 months=("January", "February", "March", "April", "May", "June", "July",
                         "August", "September", "October", "November", "December"),
                 date="{month} {day}, {year}", at="at", list_and="and", oxford_comma=True),
    # French: decimal comma, narrow no-break space between thousands, no-break space before a
    # unit, a currency code or %, "1er" for the first of the month.
    "fr": Locale(decimal=",", group="\u202f", unit_space="\u00a0", percent_space="\u00a0",
                 first_day="1er",
                 months=("janvier", "février", "mars", "avril", "mai", "juin", "juillet",
                         "août", "septembre", "octobre", "novembre", "décembre"),
                 date="{day} {month} {year}", at="à", list_and="et", oxford_comma=False),
}

# Currencies whose smallest unit is not a hundredth (Stripe's lists).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def locale(language: str | None) -> Locale:
    return LOCALES.get((language or "en").partition("-")[0], LOCALES["en"])


def _digits(value: Decimal | int | float, places: int, loc: Locale) -> str:
    text = f"{value:,.{places}f}"
    return text.replace(",", "\0").replace(".", loc.decimal).replace("\0", loc.group)


def format_number(value: int | float, language: str | None = "en") -> str:
    """At most one decimal, none when it would be 0: 1234 → "1,234", 12.5 → "12,5" in French."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"not a number: {value!r}")
    rounded = round(float(value), 1)
    places = 0 if rounded == int(rounded) else 1
    return _digits(rounded, places, locale(language))


def format_money(amount: int, currency: str, language: str | None = "en") -> str:
    """`amount` in the currency's smallest unit: (1500, "usd") → "$15.00" in English,
    "15,00 USD" in French (no-break space); other currencies "15.00 EUR"."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"an amount is an integer in the currency's smallest unit, not {amount!r}")
    code = str(currency).strip().lower()
    if not re.fullmatch(r"[a-z]{3}", code):
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    places = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    loc = locale(language)
    digits = _digits(Decimal(abs(amount)).scaleb(-places), places, loc)
    sign = "-" if amount < 0 else ""
    if code == "usd" and loc is LOCALES["en"]:
        return f"{sign}${digits}"
    return f"{sign}{digits}{loc.unit_space}{code.upper()}"


def format_minutes(value: int | float, language: str | None = "en") -> str:
    """12.5 → "12.5 minutes", 1 → "1 minute"; French: "12,5 minutes", "1,5 minute"."""
    number = format_number(value, language)
    rounded = abs(round(float(value), 1))
    lang = (language or "en").partition("-")[0]
    singular = rounded < 2 if lang == "fr" else rounded == 1
    return f"{number}{locale(language).unit_space}{'minute' if singular else 'minutes'}"


def format_percent(value: int | float, language: str | None = "en") -> str:
    """80 → "80%" / "80 %"."""
    return f"{format_number(value, language)}{locale(language).percent_space}%"


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return _as_utc(value).date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if len(text) == 10:
        return date.fromisoformat(text)
    return _as_utc(datetime.fromisoformat(text)).date()


def _as_utc(value: datetime | str) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)  # a naive time is taken as UTC
    return moment.astimezone(timezone.utc)


def format_date(value: date | datetime | str, language: str | None = "en") -> str:
    """"2026-12-01" → "December 1, 2026" / "1er décembre 2026"."""
    day = _as_date(value)
    loc = locale(language)
    return loc.date.format(day=loc.first_day if day.day == 1 else str(day.day),
                           month=loc.months[day.month - 1], year=day.year)


def format_datetime(value: datetime | str, language: str | None = "en") -> str:
    """An ISO date and time, shown in UTC: "November 21, 2026 at 00:00 UTC"."""
    moment = _as_utc(value)
    loc = locale(language)
    return f"{format_date(moment, language)} {loc.at} {moment:%H:%M} UTC"


def week_start(week: str) -> date:
    """The Monday of an ISO week: "2026-W47" → 2026-11-16."""
    match = re.fullmatch(r"(\d{4})-?W(\d{2})", str(week).strip())
    if not match:
        raise ValueError(f"not an ISO week (e.g. 2026-W47): {week!r}")
    return date.fromisocalendar(int(match[1]), int(match[2]), 1)


def format_list(items: Iterable[Any], language: str | None = "en") -> str:
    """["a", "b", "c"] → "a, b, and c" / "a, b et c"."""
    words = [str(item) for item in items]
    loc = locale(language)
    if len(words) <= 2:
        return f" {loc.list_and} ".join(words)
    comma = "," if loc.oxford_comma else ""
    return f"{', '.join(words[:-1])}{comma} {loc.list_and} {words[-1]}"


def nl2br(value: Any) -> Markup:
    """Escapes, then keeps the line breaks: for text written by a person, shown in HTML."""
    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return Markup("<br>\n").join(escape(line) for line in lines)


def _defined(*values: Any) -> None:
    """A missing field passed to a filter: the same error as printing it ("'amount' is
    undefined"), not the filter's complaint about an odd value."""
    for value in values:
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined raises here
            raise UndefinedError("a filter was given an undefined value")


def _filter(fn: Any, localised: bool) -> Any:
    if localised:
        @pass_context
        def filter_(context: Context, value: Any, *args: Any) -> Any:
            _defined(value, *args)
            return fn(value, *args, language=context.get("language"))
    else:
        def filter_(value: Any, *args: Any) -> Any:  # type: ignore[misc]
            _defined(value, *args)
            return fn(value, *args)
    filter_.__name__ = fn.__name__
    filter_.__doc__ = fn.__doc__
    return filter_


FILTERS: dict[str, Any] = {
    "money": _filter(format_money, True),  # {{ amount|money(currency) }}
    "minutes": _filter(format_minutes, True),  # {{ used_minutes|minutes }}: "12.5 minutes"
    "number": _filter(format_number, True),
    "percent": _filter(format_percent, True),
    "date": _filter(format_date, True),  # ISO date (or datetime) → "December 1, 2026"
    "datetime": _filter(format_datetime, True),  # ISO datetime → "… at 00:00 UTC"
    "listing": _filter(format_list, True),  # ["a", "b", "c"] → "a, b, and c"
    "week_start": _filter(week_start, False),  # {{ (week|week_start)|date }}
    "nl2br": _filter(nl2br, False),  # escapes, keeps line breaks (HTML block only)
}
