"""slwtune.raycluster: the line `slwtune train|tune` print when they start a local Ray."""

from slwtune.raycluster import dashboard_sign_in_hint


def test_hint_names_the_dashboard_and_ray_get_auth_token_never_the_token():
    line = dashboard_sign_in_hint("127.0.0.1:8265", "token")
    assert "http://127.0.0.1:8265" in line
    assert "`ray get-auth-token`" in line and "token auth on" in line


def test_hint_says_when_token_auth_is_off():
    line = dashboard_sign_in_hint("http://127.0.0.1:8265", "disabled")
    assert "token auth is off" in line and "get-auth-token" not in line
