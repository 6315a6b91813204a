"""service.settings: the environment the API reads, the token list above all."""

import pytest
from pydantic import ValidationError

from service.settings import Settings, parse_tokens


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
