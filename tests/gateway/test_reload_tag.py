"""The reload script's tag (gateway/reload.py, pure): where it goes in a page, which answers get
it, and that pages of dev servers with their own hot reload are left alone."""

from __future__ import annotations

from midori_preview.gateway import reload

TAG = reload.tag(7)
HTML = [(b"content-type", b"text/html; charset=utf-8")]


def test_the_tag_names_the_version_and_goes_before_the_last_body_end() -> None:
    assert TAG == b'<script src="/__midori/reload.js" data-midori-version="7" async></script>'
    page = b"<html><body><p>&lt;/body&gt;</p></BODY></html>"
    assert reload.add_script(page, TAG) == b"<html><body><p>&lt;/body&gt;</p>" + TAG + (
        b"</BODY></html>"
    )
    assert reload.add_script(b"<h1>no body tag</h1>", TAG) == b"<h1>no body tag</h1>" + TAG


def test_dev_servers_with_their_own_hot_reload_keep_theirs() -> None:
    vite = b'<script type="module" src="/@vite/client"></script><div id="app"></div>'
    assert reload.add_script(vite, TAG) is None


def test_only_whole_uncompressed_html_answers_to_a_get_take_it() -> None:
    assert reload.injectable("GET", 200, HTML)
    assert not reload.injectable("HEAD", 200, HTML)
    assert not reload.injectable("POST", 200, HTML)
    assert not reload.injectable("GET", 206, HTML)
    assert not reload.injectable("GET", 404, HTML)
    assert not reload.injectable("GET", 200, [(b"content-type", b"text/css")])
    assert not reload.injectable("GET", 200, [*HTML, (b"content-encoding", b"gzip")])
    assert reload.injectable("GET", 200, [*HTML, (b"content-encoding", b"identity")])


def test_the_length_is_the_new_one() -> None:
    headers = [(b"content-type", b"text/html"), (b"content-length", b"10")]
    assert reload.with_length(headers, 99) == [
        (b"content-type", b"text/html"),
        (b"content-length", b"99"),
    ]
