"""Turn a loosely structured promptJson into a small, typed page model that is safe to render.

Everything that reaches a template passes through here: text is coerced to plain strings (the
templates escape it), colors become `#rrggbb` or fall back to defaults, the font name keeps only
letters, digits, spaces and hyphens, and links keep only schemes that cannot run script. Unknown
section types and missing fields never raise; they degrade to a generic "title + text + cards"
section. `src/main.js` in the vite template mirrors these rules in the browser.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from midori_preview.templates import colors

DEFAULT_PRIMARY = "#2f5d50"
DEFAULT_ACCENT = "#e9b44c"
DEFAULT_TITLES = {
    "menu": "Menu",
    "about": "About",
    "hours": "Opening hours",
    "contact": "Contact",
    "gallery": "Gallery",
    "features": "Features",
}
CURRENCY_SYMBOLS = {"THB": "฿", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}
RTL_LANGUAGES = frozenset({"ar", "dv", "fa", "he", "ps", "ur", "yi"})

_LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
_WORDS = re.compile(r"[A-Za-z][A-Za-z -]{0,39}")
_ANCHOR = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_RELATIVE_URL = re.compile(r"(?!//)[A-Za-z0-9._~/?=&%+-]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_SAFE_SCHEMES = ("http://", "https://", "mailto:", "tel:")


@dataclass(frozen=True)
class Link:
    text: str
    href: str
    label: str = ""


@dataclass(frozen=True)
class Item:
    title: str
    text: str = ""
    price: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Image:
    src: str
    alt: str
    caption: str


@dataclass(frozen=True)
class Section:
    kind: str  # hero | menu | hours | contact | gallery | cards
    type: str  # the promptJson's own type, slugged, for a CSS class
    anchor: str
    title: str
    subtitle: str = ""
    paragraphs: tuple[str, ...] = ()
    items: tuple[Item, ...] = ()
    groups: tuple[Group, ...] = ()
    rows: tuple[tuple[str, str], ...] = ()
    links: tuple[Link, ...] = ()
    address: str = ""
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class Theme:
    primary: str
    accent: str
    on_primary: str  # readable text on a primary background
    on_accent: str
    ink: str  # primary if it is readable as text on white, else near-black
    font: str


@dataclass(frozen=True)
class Page:
    name: str
    tagline: str
    lang: str
    dir: str
    theme: Theme
    hero: Section | None
    sections: tuple[Section, ...]


def text(value: Any) -> str:
    """Plain text from a scalar; anything else (objects, lists, booleans, NaN) is empty."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return ""
    return str(int(value)) if value.is_integer() else f"{value:.2f}"


def font(value: Any) -> str:
    """A font family name reduced to letters, digits, spaces and hyphens ("" if nothing is left)."""
    kept = "".join(c for c in text(value) if c.isalnum() or c in " -")
    return " ".join(kept.split())[:64]


def theme(raw: Any) -> Theme:
    data = raw if isinstance(raw, dict) else {}
    primary = colors.color(data.get("primaryColor"), DEFAULT_PRIMARY)
    accent = colors.color(data.get("accentColor"), DEFAULT_ACCENT)
    # Headings and links use the primary color only where it reads as text on white (WCAG AA).
    ink = primary if 1.05 / (colors.luminance(primary) + 0.05) >= 4.5 else "#1f2328"
    on_primary, on_accent = colors.readable_on(primary), colors.readable_on(accent)
    return Theme(primary, accent, on_primary, on_accent, ink, font(data.get("font")))


def safe_href(value: Any) -> str:
    """A link target that cannot run script: #anchor, http(s), mailto, tel or a relative path."""
    raw = text(value)
    if raw.startswith("#"):
        return raw if _ANCHOR.fullmatch(raw[1:]) else ""
    if raw.lower().startswith(_SAFE_SCHEMES) or _RELATIVE_URL.fullmatch(raw):
        return raw
    return ""


def price(value: Any, currency: str) -> str:
    amount = text(value)
    if not amount:
        return ""
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    if symbol:
        return symbol + amount
    return f"{amount} {currency}".strip()


def _first(data: dict[str, Any], *keys: str) -> str:
    return next((t for t in (text(data.get(k)) for k in keys) if t), "")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _paragraphs(data: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for key in ("body", "text", "description", "content", "paragraphs", "quote"):
        value = data.get(key)
        for chunk in value if isinstance(value, list) else [value]:
            out.extend(p.strip() for p in text(chunk).split("\n\n") if p.strip())
    return tuple(out)


def _item(raw: Any, currency: str) -> Item | None:
    if not isinstance(raw, dict):
        return Item(title=text(raw)) if text(raw) else None
    cur = text(raw.get("currency")) or currency
    tags = tuple(t for t in (text(x) for x in _list(raw.get("tags"))) if t)
    found = Item(
        title=_first(raw, "name", "title", "label", "question"),
        text=_first(raw, "description", "body", "text", "answer"),
        price=price(raw.get("price"), cur),
        tags=tags,
    )
    return found if found.title or found.text else None


def _items(raw: Any, currency: str) -> tuple[Item, ...]:
    return tuple(i for i in (_item(x, currency) for x in _list(raw)) if i)


def _hours(data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    rows: list[tuple[str, str]] = []
    for row in _list(data.get("rows")) or _list(data.get("items")):
        if not isinstance(row, dict):
            rows.append((text(row), ""))
            continue
        opens, closes = text(row.get("open")), text(row.get("close"))
        value = f"{opens}–{closes}" if opens and closes else _first(row, "hours", "time", "text")
        rows.append(
            (_first(row, "days", "day", "label"), "Closed" if row.get("closed") is True else value)
        )
    return tuple(r for r in rows if r[0] or r[1])


def _contact(data: dict[str, Any]) -> tuple[Link, ...]:
    links: list[Link] = []
    phone = text(data.get("phone"))
    digits = re.sub(r"[^0-9+]", "", phone)
    if phone:
        links.append(Link(phone, "tel:" + digits if digits else "", "Phone"))
    email = text(data.get("email"))
    if email:
        links.append(Link(email, "mailto:" + email if _EMAIL.fullmatch(email) else "", "Email"))
    site = _first(data, "website", "url")
    if site:
        links.append(
            Link(site, site if site.lower().startswith(_SAFE_SCHEMES[:2]) else "", "Website")
        )
    return tuple(links)


def _images(data: dict[str, Any]) -> tuple[Image, ...]:
    images: list[Image] = []
    for raw in _list(data.get("images")) or _list(data.get("items")):
        entry = raw if isinstance(raw, dict) else {"src": raw}
        src = _first(entry, "src", "url", "image")
        if not (src.lower().startswith(_SAFE_SCHEMES[:2]) or _RELATIVE_URL.fullmatch(src)):
            continue
        caption = _first(entry, "caption", "title")
        images.append(Image(src, _first(entry, "alt") or caption, caption))
    return tuple(images)


def _cta(data: dict[str, Any]) -> tuple[Link, ...]:
    raw = data.get("cta")
    links = []
    for entry in ([raw] if isinstance(raw, dict) else _list(raw)) + _list(data.get("buttons")):
        label = _first(entry, "label", "text") if isinstance(entry, dict) else ""
        if label:
            links.append(Link(label, safe_href(entry.get("href")) or "#"))
    return tuple(links)


def section(data: dict[str, Any], anchor: str, currency: str) -> Section:
    slug = _slug(data.get("type")) or "section"
    title = _first(data, "title", "heading", "name") or DEFAULT_TITLES.get(slug, "")
    if not title and _WORDS.fullmatch(text(data.get("type"))):
        title = slug.replace("-", " ").capitalize()  # "opening-times" -> "Opening times"
    subtitle = _first(data, "subtitle", "tagline")
    base = Section("cards", slug, anchor, title, subtitle, _paragraphs(data))
    currency = text(data.get("currency")) or currency
    if slug == "hero":
        return Section("hero", slug, anchor, title, subtitle, base.paragraphs, links=_cta(data))
    if slug == "menu":
        groups = [Group("", _items(data.get("items"), currency))]
        for group in _list(data.get("categories")) or _list(data.get("groups")):
            if isinstance(group, dict):
                items = _items(group.get("items"), currency)
                groups.append(Group(_first(group, "name", "title"), items))
        kept = tuple(g for g in groups if g.items)
        return Section("menu", slug, anchor, title, subtitle, base.paragraphs, groups=kept)
    if slug == "hours":
        return Section("hours", slug, anchor, title, subtitle, base.paragraphs, rows=_hours(data))
    if slug == "contact":
        return Section(
            "contact", slug, anchor, title, subtitle, base.paragraphs,
            links=_contact(data), address=text(data.get("address")),
        )  # fmt: skip
    if slug == "gallery":
        images = _images(data)
        return Section("gallery", slug, anchor, title, subtitle, base.paragraphs, images=images)
    items = _items(data.get("items"), currency) or _items(data.get("features"), currency)
    return Section("cards", slug, anchor, title, subtitle, base.paragraphs, items=items)


def page(prompt_json: dict[str, Any]) -> Page:
    """The safe page model for one promptJson; never raises on odd or missing fields."""
    data = prompt_json if isinstance(prompt_json, dict) else {}
    lang = text(data.get("language")) or "en"
    lang = lang if _LANG.fullmatch(lang) else "en"
    currency = text(data.get("currency"))
    used = {"top", "main", "content"}
    hero: Section | None = None
    sections: list[Section] = []
    for index, raw in enumerate(_list(data.get("sections")), start=1):
        if not isinstance(raw, dict):
            continue
        built = section(raw, _anchor(raw, index, used), currency)
        if built.kind == "hero" and hero is None:
            hero = built
        else:
            sections.append(built if built.kind != "hero" else _as_cards(built))
    return Page(
        name=text(data.get("name")) or "Untitled site",
        tagline=text(data.get("tagline")),
        lang=lang,
        dir="rtl" if lang.split("-")[0].lower() in RTL_LANGUAGES else "ltr",
        theme=theme(data.get("theme")),
        hero=hero,
        sections=tuple(sections),
    )


def _slug(value: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text(value).lower()).strip("-")[:40]


def _anchor(data: dict[str, Any], index: int, used: set[str]) -> str:
    """The section's own id if usable, else its type, else its position; unique on the page."""
    candidates = (text(data.get("id")), _slug(data.get("type")), f"section-{index}")
    base = next(c for c in candidates if _ANCHOR.fullmatch(c))
    anchor, n = base, 1
    while anchor in used:
        n += 1
        anchor = f"{base}-{n}"
    used.add(anchor)
    return anchor


def _as_cards(hero: Section) -> Section:
    return Section("cards", hero.type, hero.anchor, hero.title, hero.subtitle, hero.paragraphs)
