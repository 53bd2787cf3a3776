"""The configuration reference (docs/configuration.md), written from the settings model itself.

Every row comes from a settings model of `server.config` (`Settings`, and any other
`BaseSettings` class defined there, each its own table): the variable's name (the `TUTOR_` prefix, or the
field's own aliases such as `OPENAI_API_KEY`), its type, its default and its description (the
attribute's docstring), so the page cannot drift from the code. `tutor config --markdown` prints
it; `tests/test_config_reference.py` checks that the committed page is what it prints.
"""

from __future__ import annotations

import types
import typing
from pathlib import PurePath
from typing import Any, Literal

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

REGENERATE = "tutor config --markdown > docs/configuration.md"

INTRO = f"""\
# Configuration

<!-- Generated from server/config.py by `{REGENERATE}`:
edit the settings' docstrings there, not this page. -->

Settings come from environment variables, or from a `.env` file in the working directory;
`server/config.py` is the only module that reads them. Our own settings have the `TUTOR_` prefix;
the provider keys keep the names people already have set: `OPENAI_API_KEY` / `OPENAI_BASE_URL`
for everything, and `LLM_BASE_URL` / `LLM_API_KEY` / `LLM_MODEL` to send chat (only) elsewhere.
Names are case-insensitive. A list is written comma-separated; an optional setting left unset
takes the default its description gives. Which provider settings to set for OpenAI, OpenRouter or
a local server: the README, "Pointing it at a provider".
"""


def env_names(name: str, field: FieldInfo, prefix: str) -> list[str]:
    """The environment variables that set a field: its aliases (upper-cased, as they are matched
    case-insensitively), else the prefixed field name."""
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    names = [c.upper() for c in choices if isinstance(c, str)]
    return list(dict.fromkeys(names)) or [(prefix + name).upper()]


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        inner = type_name(args[0]) if len(args) == 1 else " or ".join(map(type_name, args))
        return inner + ", optional"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "`key=value` pairs"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_text(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, PurePath):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_models() -> list[type[BaseSettings]]:
    """Every settings model of `server.config`, in the order the module defines them."""
    from . import config

    return [value for value in vars(config).values()
            if isinstance(value, type) and issubclass(value, BaseSettings)
            and value.__module__ == config.__name__]


def table(model: type[BaseSettings]) -> str:
    """A heading, the first paragraph of the model's docstring, and one row per setting in the
    order the model declares them."""
    prefix = model.model_config.get("env_prefix", "")
    summary = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    rows = [f"## `{model.__name__}`", "", summary, "",
            "| Variable | Type | Default | What it does |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        names = ", ".join(f"`{n}`" for n in env_names(name, field, prefix))
        default = default_text(field.get_default(call_default_factory=True))
        rows.append(f"| {names} | {cell(type_name(field.annotation))} | {cell(default)} | "
                    f"{cell(field.description or '')} |")
    return "\n".join(rows) + "\n"


def markdown() -> str:
    """The whole page: every settings model's table."""
    return INTRO + "".join("\n" + table(model) for model in settings_models())
