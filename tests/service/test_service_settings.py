"""service.settings: the environment the API reads, the token list above all."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from pydantic import ValidationError

from service.settings import TOKENS_FORMAT, Settings, parse_tokens


def test_token_list_errors_never_show_a_token():
    secret = "s3cret-token-abcdefghij"
    for text in (f"alice:{secret},alice:{secret}x", f"alice:{secret},bob:{secret}", f"alice{secret}"):
        with pytest.raises(ValueError) as info:
            parse_tokens(text)
        assert secret not in str(info.value)
    assert parse_tokens(f" alice:{secret} , bob:{secret}2 ")["bob"].get_secret_value() == secret + "2"


def test_settings_require_api_tokens(monkeypatch, tmp_path):
    monkeypatch.delenv("SLWTUNE_API_TOKENS", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    with pytest.raises(ValidationError, match="api_tokens"):
        Settings()
    monkeypatch.setenv("SLWTUNE_API_TOKENS", "ci:0123456789abcdef0123")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-secret")
    s = Settings()
    assert list(s.api_tokens) == ["ci"] and s.ray_token.get_secret_value() == "ray-secret"
    assert "0123456789abcdef0123" not in repr(s)


ROOT = Path(__file__).resolve().parents[2]


def test_env_example_token_line_gives_tokens_the_service_accepts(tmp_path):
    text = (ROOT / "deploy" / "env.example").read_text()
    commands = [line.lstrip("# ").strip() for line in text.splitlines() if "SLWTUNE_API_TOKENS=" in line
                and line.lstrip("# ").startswith("echo")]
    assert len(commands) == 1, "env.example shows one command that writes a SLWTUNE_API_TOKENS line"
    subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, check=True)
    env = dotenv_values(tmp_path / ".env")
    tokens = parse_tokens(env["SLWTUNE_API_TOKENS"])
    assert list(tokens) == ["ops"] and len(tokens["ops"].get_secret_value()) >= 32


@pytest.mark.parametrize("value", ["0123456789abcdef0123456789abcdef", "ops:short", "", "ops:a,ops:b"])
def test_a_bad_token_list_stops_the_api_with_the_expected_format(tmp_path, value):
    env = {**os.environ, "SLWTUNE_API_TOKENS": value, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", "import service.app as a; a.app"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"expected {TOKENS_FORMAT}" in out.stderr and "Traceback" not in out.stderr
    assert "SLWTUNE_API_TOKENS" in out.stderr.splitlines()[1]
    if len(value) >= 16:
        assert value not in out.stderr  # never the token itself


def test_env_name_is_the_variable_the_settings_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("SLWTUNE_API_TOKENS", "ci:0123456789abcdef0123")
    limits = [f for f in Settings.model_fields if f.startswith("max_")] + ["allowed_entrypoints"]
    for field in limits:
        monkeypatch.setenv(Settings.env_name(field), "mypkg.loop:train" if field == "allowed_entrypoints" else "3")
    s = Settings()
    assert s.allowed_entrypoints == ["mypkg.loop:train"]
    assert all(getattr(s, f) == 3 for f in limits if f != "allowed_entrypoints")
    assert Settings.env_name("max_workers") == "SLWTUNE_MAX_WORKERS"
