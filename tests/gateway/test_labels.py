"""Preview host labels and links: what a signature covers, when it stops opening, and that a
label stays a valid DNS label."""

from __future__ import annotations

from datetime import UTC, datetime

from midori_preview.gateway.labels import Label, PreviewLinks, parse_label, sign_label, verify_label

KEY = b"k" * 32
SANDBOX = "abcdefghijklmnop"  # 16 base32 characters, as new_sandbox_id makes them
TOKEN = "tok-" + "x" * 28
EXPIRY = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())


def test_a_signed_label_opens_until_its_expiry_for_its_sandbox_token_and_key() -> None:
    label = parse_label(sign_label(KEY, SANDBOX, 3000, EXPIRY, TOKEN))
    assert label is not None and label.signed
    assert (label.port, label.sandbox_id, label.expiry) == (3000, SANDBOX, EXPIRY)
    assert verify_label(KEY, label, TOKEN, EXPIRY - 1)
    assert not verify_label(KEY, label, TOKEN, EXPIRY + 1)  # expired
    assert not verify_label(KEY, label, TOKEN + "y", EXPIRY - 1)  # another token (a new sandbox)
    assert not verify_label(b"q" * 32, label, TOKEN, EXPIRY - 1)  # another key
    assert label.mac is not None
    for forged in (
        Label(3001, SANDBOX, EXPIRY, label.mac),  # another port
        Label(3000, "bbbbbbbbbbbbbbbb", EXPIRY, label.mac),  # another sandbox
        Label(3000, SANDBOX, EXPIRY + 3600, label.mac),  # a longer life
    ):
        assert not verify_label(KEY, forged, TOKEN, EXPIRY - 1)
    assert not verify_label(KEY, Label(3000, SANDBOX), TOKEN, 0)  # unsigned: not by signature


def test_labels_parse_strictly() -> None:
    assert parse_label(f"3000-{SANDBOX}") == Label(3000, SANDBOX)
    for junk in ("", "3000", "x-abc", f"123456-{SANDBOX}", "3000-", "3000-a.b", "3000-a-b-c-d"):
        assert parse_label(junk) is None, junk
    assert parse_label(f"3000-{SANDBOX}-!!-mac") is None


def test_links_are_dns_safe_and_name_the_public_port() -> None:
    links = PreviewLinks(KEY, "preview.example.com", "https", 443)
    open_url = links.open_url(SANDBOX, 65535, TOKEN, datetime(2100, 1, 1, tzinfo=UTC))
    label = open_url.removeprefix("https://").split(".", 1)[0]
    assert len(label) <= 63 and label == label.lower()
    assert open_url.endswith(".preview.example.com/")
    assert links.preview_url(SANDBOX, 3000) == f"https://3000-{SANDBOX}.preview.example.com/"
    local = PreviewLinks(KEY, "preview.localhost", "http", 8000)
    assert local.preview_url(SANDBOX, 3000) == f"http://3000-{SANDBOX}.preview.localhost:8000/"
