"""Settings: a missing or malformed setting names its variable; dev mode generates keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VDI_"):
            monkeypatch.delenv(name)


def test_a_real_database_requires_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDI_DATABASE_URL", "postgresql://db/vdi")
    with pytest.raises(ConfigError, match="VDI_SECRET_KEY, VDI_TURN_SECRET must be set"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VDI_PORT", "eighty", "VDI_PORT"),
        ("VDI_PORT", "70000", "VDI_PORT"),
        ("VDI_CLUSTER", "openshift", "VDI_CLUSTER"),
        ("VDI_SECRET_KEY", "short", "VDI_SECRET_KEY: Value error, must be at least 32"),
        ("VDI_BASE_DOMAIN", "Not A Domain", "VDI_BASE_DOMAIN"),
        ("VDI_MAX_SESSIONS_PER_USER", "0", "VDI_MAX_SESSIONS_PER_USER"),
        ("VDI_AUTO_MIGRATE", "perhaps", "VDI_AUTO_MIGRATE"),
    ],
)
def test_a_malformed_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(data_dir=Path("/nonexistent"))
    assert str(raised.value).startswith(name)


def test_a_bad_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDI_TURN_SECRET", "tiny-but-secret")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "tiny-but-secret" not in str(raised.value)


def test_embedded_mode_generates_private_keys_once(tmp_path: Path) -> None:
    first = load_settings(data_dir=tmp_path)
    second = load_settings(data_dir=tmp_path)
    assert first.require_secret_key() == second.require_secret_key()
    assert len(first.require_turn_secret()) >= 32
    for name in ("secret_key", "turn_secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert first.should_auto_migrate


def test_auto_migrate_defaults_off_for_a_real_database(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        database_url="postgresql://db/vdi", secret_key="k" * 32, turn_secret="t" * 32
    )
    assert not settings.should_auto_migrate


def test_the_configuration_page_is_the_settings_model() -> None:
    """docs/configuration.md carries the table `vdi-control settings` prints: a setting added,
    renamed or re-described without regenerating the page fails here."""
    from app.config import settings_reference

    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    table = settings_reference()
    assert table in page, "regenerate the table: vdi-control settings"
    for name in Settings.model_fields:
        assert f"`VDI_{name.upper()}`" in table
        assert Settings.model_fields[name].description, f"VDI_{name.upper()} has no description"
