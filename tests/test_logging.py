"""Logs never carry a secret: secret-named fields, bearer tokens in text, and exception frames'
local variables (which rich-style tracebacks would print) stay out."""

from __future__ import annotations

import pytest

from midori_preview.logging import configure_logging, get_logger


@pytest.mark.parametrize("json", [False, True])
def test_secrets_never_reach_a_log_line(capsys: pytest.CaptureFixture[str], json: bool) -> None:
    configure_logging("DEBUG", json=json)
    log = get_logger("test")
    log.info("sandbox.created", preview_token="tok-SECRET-1", api_key="SECRET-2", sandbox_id="s1")
    log.info("request", header="Authorization: Bearer SECRET-3.abc")

    def fails(daytona_api_key: str) -> None:
        session_cookie = daytona_api_key + "-5"  # noqa: F841 - a local that must not be printed
        raise RuntimeError("boom")

    key = "-".join(["SECRET", "4"])  # a runtime value, as secrets are (not a source literal)
    try:
        fails(key)
    except RuntimeError:
        log.exception("request.crashed", path="/api/preview/daytona")
    err = capsys.readouterr().err
    assert "boom" in err and "request.crashed" in err and "s1" in err
    assert "SECRET" not in err, err
    configure_logging("WARNING")
