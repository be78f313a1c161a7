"""Site templates: safe rendering of any promptJson, exact prompt.json, stable versions, and real
sites that install, build and serve (real npm, real Vite, real Chromium)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from midori_preview.templates import TEMPLATES, TemplateBuild, render_template

CAFE: dict[str, Any] = json.loads((Path(__file__).parent / "test-cafe.json").read_bytes())
CAFE_NAME = "บ้านกาแฟ Baan Kafae"
XSS = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"

MESSY: dict[str, Any] = {
    "name": XSS,
    "tagline": XSS,
    "language": "en-GB",
    "currency": "USD",
    "theme": {"primaryColor": "red;}</style><script>", "accentColor": "gold", "font": 'x"}<b>'},
    "sections": [
        None,
        "not a section",
        {"type": "hero", "title": XSS, "cta": {"label": "Go", "href": "javascript:alert(1)"}},
        {
            "type": "menu",
            "categories": [{"name": "Drinks", "items": [{"name": XSS, "price": 3.5}]}],
        },
        {"type": "faq", "title": "FAQ", "items": [{"question": "Open late?", "answer": XSS}]},
        {"type": "testimonials", "body": "First.\n\nSecond.", "items": ["plain string item"]},
        {"type": "hours", "rows": [{"day": "Sun", "closed": True}, "By appointment", 7]},
        {"type": "contact", "email": "not an email", "phone": XSS, "website": "javascript:x"},
        {"type": "gallery", "images": ["javascript:alert(1)", {"src": "img/a.jpg", "alt": XSS}]},
        {"id": "menu", "type": "<b>weird</b>", "title": {"nested": "object"}, "items": {"a": 1}},
        {"type": "hero", "title": "A second hero"},
    ],
}


def _file(build: TemplateBuild, path: str) -> bytes:
    return next(f.content for f in build.files if f.path == path)


def _static_html(prompt_json: dict[str, Any]) -> str:
    return _file(render_template("static", prompt_json), "index.html").decode("utf-8")


def _write(build: TemplateBuild, root: Path) -> None:
    for file in build.files:
        target = root / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)


def _run(command: str, cwd: Path) -> float:
    started = time.monotonic()
    # Template commands are shell command lines ("$PORT", &&), as a sandbox runs them.
    done = subprocess.run(  # noqa: S602
        command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def _serve(build: TemplateBuild, cwd: Path) -> Iterator[str]:
    """Runs the template's start command with $PORT set; yields its base URL once it answers."""
    port = _free_port()
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(  # noqa: S602
        build.start,
        shell=True,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, "server exited before answering"
            try:
                _get(url)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not answer within 15 s"
                time.sleep(0.05)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


# ---- static: rendering ---------------------------------------------------------------------


def test_static_renders_the_cafe_with_its_thai_name_byte_exact() -> None:
    build = render_template("static", CAFE)
    html = _file(build, "index.html")

    assert [f.path for f in build.files] == ["index.html", "styles.css", "prompt.json"]
    assert (build.install, build.build) == (None, None)
    assert f"<title>{CAFE_NAME}</title>".encode() in html
    assert f'<h1 id="site-name">{CAFE_NAME}</h1>'.encode() in html
    text = html.decode("utf-8")
    assert '<html lang="th" dir="ltr">' in text
    assert '<a class="button" href="#menu">ดูเมนู / See the menu</a>' in text
    assert 'id="menu"' in text  # the hero's call to action lands on the menu
    assert '<span class="menu__price">฿95</span>' in text
    assert "ชาไทยเย็น Thai iced tea" in text
    assert '<tr><th scope="row">Mon–Fri</th><td>07:30–17:00</td></tr>' in text
    assert '<a href="tel:+6653000000">+66 53 000 000</a>' in text
    assert '<a href="mailto:hello@baankafae.example">hello@baankafae.example</a>' in text
    assert "A six-seat bar in Nimman" in text


def test_static_theme_reaches_css_as_validated_values() -> None:
    css = _file(render_template("static", CAFE), "styles.css").decode("utf-8")

    assert "--primary: #6b4226;" in css
    assert "--accent: #e8c07d;" in css
    assert '--font: "Sarabun", var(--font-fallback);' in css


@pytest.mark.parametrize(
    "field",
    ["name", "tagline", "hero title", "section title", "body", "menu item", "hours", "address"],
)
def test_script_in_any_text_is_rendered_as_text(field: str) -> None:
    prompt = copy.deepcopy(CAFE)
    hero, menu, about, hours, contact = prompt["sections"]
    target = {
        "name": (prompt, "name"),
        "tagline": (prompt, "tagline"),
        "hero title": (hero, "title"),
        "section title": (about, "title"),
        "body": (about, "body"),
        "menu item": (menu["items"][0], "name"),
        "hours": (hours["rows"][0], "days"),
        "address": (contact, "address"),
    }
    where, key = target[field]
    where[key] = XSS

    html = _static_html(prompt)

    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "hostile",
    [
        "red;}</style><script>",
        "#fff;background:url(x)",
        "#12345g",
        "rgb(1,2,3)",
        "expression(alert(1))",
        "red }",
        "",
        None,
        42,
        {"r": 1},
    ],
)
def test_hostile_colors_fall_back_to_defaults(hostile: Any) -> None:
    prompt = {"name": "x", "theme": {"primaryColor": hostile, "accentColor": hostile}}

    css = _file(render_template("static", prompt), "styles.css").decode("utf-8")
    theme = css[css.rindex(":root {") :]

    assert "--primary: #2f5d50;" in theme
    assert "--accent: #e9b44c;" in theme
    assert "<" not in css
    assert "script" not in css
    assert theme.count("{") == 1
    assert theme.count("}") == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("#ABC", "#aabbcc"),
        ("#6B4226", "#6b4226"),
        ("DarkOliveGreen", "#556b2f"),
        (" navy ", "#000080"),
    ],
)
def test_valid_colors_are_normalised_to_hex(given: str, expected: str) -> None:
    css = _file(render_template("static", {"theme": {"primaryColor": given}}), "styles.css")

    assert f"--primary: {expected};".encode() in css


def test_font_name_keeps_only_letters_digits_spaces_and_hyphens() -> None:
    prompt = {"theme": {"font": 'Evil"; } body { display:none } /* Noto-Sans 2 </style>'}}

    css = _file(render_template("static", prompt), "styles.css").decode("utf-8")

    assert '--font: "Evil body displaynone Noto-Sans 2 style", var(--font-fallback);' in css


def test_links_and_images_keep_only_script_free_urls() -> None:
    html = _static_html(MESSY)

    assert not re.search(r'(href|src)="[^"]*javascript', html)
    assert '<span class="contact__label">Website</span> javascript:x</li>' in html  # text, no link
    assert '<a class="button" href="#">Go</a>' in html
    assert '<img src="img/a.jpg" alt="&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert '<span class="contact__label">Email</span> not an email</li>' in html


@pytest.mark.parametrize(
    "prompt",
    [
        {"name": "x"},
        {},
        {"sections": "nope", "theme": "dark", "language": 5, "name": ["a"]},
        {"sections": [{}, {"type": None}, {"type": "menu"}, {"type": "hours", "rows": None}]},
        {"language": "Thai", "sections": [{"type": "contact"}, {"type": "gallery"}]},
        MESSY,
    ],
)
def test_odd_and_minimal_prompts_render(prompt: dict[str, Any]) -> None:
    build = render_template("static", prompt)
    html = _file(build, "index.html").decode("utf-8")

    assert re.search(r"<h1 id=\"site-name\">[^<]+</h1>", html)
    assert json.loads(_file(build, "prompt.json")) == prompt


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("th", '<html lang="th" dir="ltr">'),
        ("ar-EG", '<html lang="ar-EG" dir="rtl">'),
        ("Thai language", '<html lang="en" dir="ltr">'),
        ('en"><script>', '<html lang="en" dir="ltr">'),
        (5, '<html lang="en" dir="ltr">'),
    ],
)
def test_language_sets_lang_and_direction(language: Any, expected: str) -> None:
    assert _static_html({"name": "x", "language": language}).startswith(
        f"<!doctype html>\n{expected}\n"
    )


def test_unknown_section_types_render_as_generic_sections() -> None:
    html = _static_html(MESSY)

    assert '<section class="section section--faq" id="faq" aria-labelledby="faq-title">' in html
    assert '<h3 class="card__title">Open late?</h3>' in html
    assert '<p class="card__text">&lt;script&gt;alert(1)&lt;/script&gt;</p>' in html
    assert '<h2 class="section__title" id="testimonials-title">Testimonials</h2>' in html
    assert "<p>First.</p>" in html
    assert "<p>Second.</p>" in html
    assert '<h3 class="card__title">plain string item</h3>' in html
    assert '<tr><th scope="row">Sun</th><td>Closed</td></tr>' in html
    assert "<h3>Drinks</h3>" in html
    assert '<span class="menu__price">$3.50</span>' in html
    assert 'class="section section--b-weird-b" id="menu-2"' in html  # "menu" taken, tags slugged
    assert "A second hero" in html
    assert html.count("<h1") == 1


def test_unknown_template_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown template 'next'"):
        render_template("next", CAFE)


# ---- both templates: prompt.json and version -------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path"), [("static", "prompt.json"), ("vite", "public/prompt.json")]
)
def test_prompt_json_round_trips_exactly_in_utf8(template: str, path: str) -> None:
    data = _file(render_template(template, CAFE), path)

    assert json.loads(data.decode("utf-8")) == CAFE
    assert CAFE_NAME.encode("utf-8") in data  # kept as UTF-8, not \u escapes


def test_prompt_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        render_template("static", {"name": "x", "price": float("nan")})


def test_version_is_a_stable_hash_of_the_template_not_of_the_prompt() -> None:
    code = "from midori_preview.templates import render_template as r; " + "; ".join(
        f"print(r({t!r}, {{}}).version)" for t in TEMPLATES
    )
    other_process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()

    for template, seen_elsewhere in zip(TEMPLATES, other_process, strict=True):
        versions = {render_template(template, p).version for p in (CAFE, MESSY, {"name": "x"})}
        assert versions == {seen_elsewhere}
        assert re.fullmatch(r"[0-9a-f]{16}", seen_elsewhere)
    assert len(set(other_process)) == len(TEMPLATES)


def test_vite_project_is_minimal_pinned_and_never_injects_html() -> None:
    build = render_template("vite", CAFE)
    paths = [f.path for f in build.files]
    package = json.loads(_file(build, "package.json"))
    lock = json.loads(_file(build, "package-lock.json"))
    main_js = _file(build, "src/main.js").decode("utf-8")

    assert paths == [
        "index.html",
        "package-lock.json",
        "package.json",
        "src/main.js",
        "src/style.css",
        "vite.config.js",
        "public/prompt.json",
    ]
    assert package["dependencies"] == {"vite": package["dependencies"]["vite"]}
    assert re.fullmatch(r"7\.\d+\.\d+", package["dependencies"]["vite"])
    assert "devDependencies" not in package
    assert package["scripts"]["build"] == "vite build"
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    assert lock["packages"]["node_modules/vite"]["version"] == package["dependencies"]["vite"]
    assert 'base: "./"' in _file(build, "vite.config.js").decode()
    assert 'fetch("./prompt.json"' in main_js
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", main_js)
    assert (build.install, build.build) == ("npm ci --no-audit --no-fund", "npm run build")
    assert "--directory dist" in build.start


# ---- real sites: install, build, serve ------------------------------------------------------


def test_static_site_serves_with_its_start_command(tmp_path: Path) -> None:
    build = render_template("static", CAFE)
    _write(build, tmp_path)

    with _serve(build, tmp_path) as url:
        page = _get(url)
        prompt = _get(url + "prompt.json")

    assert f'<h1 id="site-name">{CAFE_NAME}</h1>'.encode() in page
    assert prompt == _file(build, "prompt.json")


@pytest.fixture(scope="module")
def vite_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[TemplateBuild, Path]:
    """The vite template installed and built once, the way a sandbox would do it."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    build = render_template("vite", CAFE)
    root = tmp_path_factory.mktemp("vite-site")
    _write(build, root)
    assert build.install is not None and build.build is not None
    install = _run(build.install, root)
    built = _run(build.build, root)
    print(f"vite template: install {install:.2f} s, build {built:.2f} s")
    return build, root


def test_vite_site_installs_builds_and_serves(vite_site: tuple[TemplateBuild, Path]) -> None:
    build, root = vite_site
    dist = root / "dist"

    assert (dist / "index.html").is_file()
    assert (dist / "prompt.json").read_bytes() == _file(build, "public/prompt.json")
    with _serve(build, root) as url:
        page = _get(url).decode("utf-8")
        prompt = _get(url + "prompt.json")
        script = re.search(r'src="\./(assets/[^"]+\.js)"', page)
        assert script, page
        assert b"prompt.json" in _get(url + script.group(1))
    assert json.loads(prompt) == CAFE


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


# What a reader sees: every text-bearing element with its visible text and link/image target,
# plus the page language and the theme as the browser computed it.
_OUTLINE_JS = """() => {
  const root = getComputedStyle(document.documentElement);
  const selector = 'title, main h1, main h2, main h3, main p, main li, main th, main td, main a, '
    + 'main img, nav a';
  return {
    outline: [...document.querySelectorAll(selector)].map(e => [
      e.tagName,
      (e.innerText || e.textContent).replace(/\\s+/g, ' ').trim(),
      e.getAttribute('href') || e.getAttribute('src') || '',
    ]),
    lang: document.documentElement.lang,
    primary: root.getPropertyValue('--primary').trim(),
    font: root.getPropertyValue('--font').replace(/\\s+/g, ' ').trim(),
  };
}"""


def _outline(browser: Any, url: str) -> dict[str, Any]:
    page = browser.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.goto(url)
        page.wait_for_selector("h1#site-name")
        seen: dict[str, Any] = page.evaluate(_OUTLINE_JS)
        return {**seen, "dialogs": dialogs}
    finally:
        page.close()


@pytest.mark.parametrize("prompt", [CAFE, MESSY], ids=["cafe", "messy"])
def test_vite_site_renders_like_the_static_one_in_a_browser(
    vite_site: tuple[TemplateBuild, Path], chromium: Any, tmp_path: Path, prompt: dict[str, Any]
) -> None:
    vite_build, vite_root = vite_site
    # Same build, new data: the vite build does not depend on the promptJson.
    (vite_root / "dist" / "prompt.json").write_bytes(
        _file(render_template("vite", prompt), "public/prompt.json")
    )
    static_build = render_template("static", prompt)
    _write(static_build, tmp_path)

    with _serve(vite_build, vite_root) as vite_url, _serve(static_build, tmp_path) as static_url:
        from_vite = _outline(chromium, vite_url)
        from_static = _outline(chromium, static_url)

    for key in ("outline", "lang", "primary", "font", "dialogs"):
        assert from_vite[key] == from_static[key], key
    assert from_vite["dialogs"] == []
    assert from_vite["outline"][0][:2] == ["TITLE", prompt["name"]]
    assert ["H1", prompt["name"], ""] in from_vite["outline"]
