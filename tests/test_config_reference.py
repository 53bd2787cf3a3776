"""docs/configuration.md is the settings model printed (server/config_reference.py): the committed
page must be what `tutor config --markdown` prints now, so a setting cannot be added, renamed or
given a new default without the reference saying so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server.config import Settings
from server.config_reference import REGENERATE, env_names, markdown, settings_models
from tests.conftest import ROOT


def test_committed_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == markdown(), (
        f"docs/configuration.md is out of date with server/config.py: run `{REGENERATE}` "
        "(from the repository root, in the project's venv) and commit the result")


def test_every_setting_has_a_description_and_a_row():
    models = settings_models()
    assert Settings in models
    page = markdown()
    for model in models:
        assert model.model_config.get("use_attribute_docstrings"), \
            f"{model.__name__}: describe its settings by docstrings (use_attribute_docstrings=True)"
        undescribed = [name for name, field in model.model_fields.items() if not field.description]
        assert not undescribed, \
            f"give these settings of {model.__name__} a docstring in server/config.py: {undescribed}"
        assert f"## `{model.__name__}`" in page
        for name, field in model.model_fields.items():
            for env in env_names(name, field, model.model_config.get("env_prefix", "")):
                assert f"`{env}`" in page, env


def test_names_follow_the_prefix_or_the_alias():
    fields = Settings.model_fields
    assert env_names("vad_silence_ms", fields["vad_silence_ms"], "TUTOR_") == ["TUTOR_VAD_SILENCE_MS"]
    assert env_names("openai_api_key", fields["openai_api_key"], "TUTOR_") == ["OPENAI_API_KEY"]
    assert env_names("stripe_api_key", fields["stripe_api_key"], "TUTOR_") == [
        "STRIPE_API_KEY", "STRIPE_SECRET_KEY"]
    row = next(line for line in markdown().splitlines() if line.startswith("| `TUTOR_VAD_SILENCE_MS`"))
    assert row.split(" | ")[1:3] == ["int", "`600`"]


def test_tutor_config_markdown_prints_it(tmp_path: Path):
    tutor = Path(sys.executable).with_name("tutor")
    result = subprocess.run([str(tutor), "config", "--markdown"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == markdown()
