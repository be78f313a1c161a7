// Renders the site from ./prompt.json at run time, so one build serves every project.
// The rules mirror midori_preview/templates/content.py: text goes into the DOM only as text
// (createElement / text nodes, never parsed as HTML), colors must be #rgb, #rrggbb or a color name,
// the font name keeps letters, digits, spaces and hyphens, links keep script-free schemes only.
import "./style.css";

const DEFAULT_PRIMARY = "#2f5d50";
const DEFAULT_ACCENT = "#e9b44c";
const DEFAULT_TITLES = {
  menu: "Menu",
  about: "About",
  hours: "Opening hours",
  contact: "Contact",
  gallery: "Gallery",
  features: "Features",
};
const CURRENCY_SYMBOLS = { THB: "฿", USD: "$", EUR: "€", GBP: "£", JPY: "¥", INR: "₹" };
const RTL_LANGUAGES = new Set(["ar", "dv", "fa", "he", "ps", "ur", "yi"]);
const NAV_LIMIT = 6;
const HEX = /^#([0-9a-f]{3}|[0-9a-f]{6})$/;
const LANG = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$/;
const WORDS = /^[A-Za-z][A-Za-z -]{0,39}$/;
const ANCHOR = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const RELATIVE_URL = /^(?!\/\/)[A-Za-z0-9._~/?=&%+-]+$/;
const EMAIL = /^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$/;
const SAFE_SCHEMES = /^(https?:\/\/|mailto:|tel:)/i;
const WEB_SCHEMES = /^https?:\/\//i;
const NOT_COLORS = new Set(["transparent", "currentcolor", "inherit", "initial", "unset", "revert"]);

// ---- promptJson -> safe page model ------------------------------------------------------

function text(value) {
  if (typeof value === "string") return value.trim();
  if (typeof value !== "number" || !Number.isFinite(value)) return "";
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

// Plain objects only answer for their own keys ("constructor" is not a section title).
const own = (table, key) => (Object.hasOwn(table, key) ? table[key] : "");
const list = (value) => (Array.isArray(value) ? value : []);
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
const first = (data, ...keys) => keys.map((k) => text(data[k])).find(Boolean) || "";
const slug = (value) =>
  text(value).toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);

function namedColorToHex(name) {
  if (!/^[a-z]{3,24}$/.test(name) || NOT_COLORS.has(name) || !CSS.supports("color", name)) {
    return "";
  }
  const probe = document.createElement("span");
  probe.style.color = name;
  document.body.append(probe);
  const rgb = getComputedStyle(probe).color.match(/^rgb\((\d+), (\d+), (\d+)\)$/);
  probe.remove();
  return rgb ? "#" + rgb.slice(1).map((c) => Number(c).toString(16).padStart(2, "0")).join("") : "";
}

function color(value, fallback) {
  const raw = text(value).toLowerCase();
  if (HEX.test(raw)) {
    return raw.length === 7 ? raw : "#" + [...raw.slice(1)].map((c) => c + c).join("");
  }
  return namedColorToHex(raw) || fallback;
}

function font(value) {
  const kept = [...text(value)].filter((c) => /[\p{L}\p{N} -]/u.test(c)).join("");
  return kept.split(/\s+/).filter(Boolean).join(" ").slice(0, 64);
}

function luminance(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => {
    const c = parseInt(hex.slice(i, i + 2), 16) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function onColor(hex) {
  const lum = luminance(hex);
  return 1.05 / (lum + 0.05) >= (lum + 0.05) / 0.05 ? "#ffffff" : "#1a1a1a";
}

function theme(raw) {
  const data = isObject(raw) ? raw : {};
  const primary = color(data.primaryColor, DEFAULT_PRIMARY);
  const accent = color(data.accentColor, DEFAULT_ACCENT);
  const ink = 1.05 / (luminance(primary) + 0.05) >= 4.5 ? primary : "#1f2328";
  const onPrimary = onColor(primary);
  const onAccent = onColor(accent);
  return { primary, accent, onPrimary, onAccent, ink, font: font(data.font) };
}

function safeHref(value) {
  const raw = text(value);
  if (raw.startsWith("#")) return ANCHOR.test(raw.slice(1)) ? raw : "";
  return SAFE_SCHEMES.test(raw) || RELATIVE_URL.test(raw) ? raw : "";
}

function price(value, currency) {
  const amount = text(value);
  if (!amount) return "";
  const symbol = own(CURRENCY_SYMBOLS, currency.toUpperCase());
  return symbol ? symbol + amount : `${amount} ${currency}`.trim();
}

function paragraphs(data) {
  const out = [];
  for (const key of ["body", "text", "description", "content", "paragraphs", "quote"]) {
    for (const chunk of Array.isArray(data[key]) ? data[key] : [data[key]]) {
      out.push(...text(chunk).split("\n\n").map((p) => p.trim()).filter(Boolean));
    }
  }
  return out;
}

function item(raw, currency) {
  if (!isObject(raw)) return text(raw) ? { title: text(raw), text: "", price: "", tags: [] } : null;
  const found = {
    title: first(raw, "name", "title", "label", "question"),
    text: first(raw, "description", "body", "text", "answer"),
    price: price(raw.price, text(raw.currency) || currency),
    tags: list(raw.tags).map(text).filter(Boolean),
  };
  return found.title || found.text ? found : null;
}

const items = (raw, currency) => list(raw).map((x) => item(x, currency)).filter(Boolean);

function hours(data) {
  const rows = [];
  for (const row of list(data.rows).length ? list(data.rows) : list(data.items)) {
    if (!isObject(row)) {
      rows.push([text(row), ""]);
      continue;
    }
    const [opens, closes] = [text(row.open), text(row.close)];
    const value = opens && closes ? `${opens}–${closes}` : first(row, "hours", "time", "text");
    rows.push([first(row, "days", "day", "label"), row.closed === true ? "Closed" : value]);
  }
  return rows.filter(([label, value]) => label || value);
}

function contactLinks(data) {
  const links = [];
  const phone = text(data.phone);
  const digits = phone.replace(/[^0-9+]/g, "");
  if (phone) links.push({ text: phone, href: digits ? "tel:" + digits : "", label: "Phone" });
  const email = text(data.email);
  const mailto = EMAIL.test(email) ? "mailto:" + email : "";
  if (email) links.push({ text: email, href: mailto, label: "Email" });
  const site = first(data, "website", "url");
  if (site) links.push({ text: site, href: WEB_SCHEMES.test(site) ? site : "", label: "Website" });
  return links;
}

function images(data) {
  const out = [];
  for (const raw of list(data.images).length ? list(data.images) : list(data.items)) {
    const entry = isObject(raw) ? raw : { src: raw };
    const src = first(entry, "src", "url", "image");
    if (!(WEB_SCHEMES.test(src) || RELATIVE_URL.test(src))) continue;
    const caption = first(entry, "caption", "title");
    out.push({ src, alt: first(entry, "alt") || caption, caption });
  }
  return out;
}

function ctas(data) {
  const entries = (isObject(data.cta) ? [data.cta] : list(data.cta)).concat(list(data.buttons));
  return entries
    .filter((e) => isObject(e) && first(e, "label", "text"))
    .map((e) => ({ text: first(e, "label", "text"), href: safeHref(e.href) || "#" }));
}

// "opening-times" -> "Opening times"; only for types made of words.
function typeTitle(value) {
  if (!WORDS.test(text(value))) return "";
  const words = slug(value).replace(/-/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function section(data, anchor, currency) {
  const type = slug(data.type) || "section";
  const base = {
    kind: "cards",
    type,
    anchor,
    title: first(data, "title", "heading", "name") || own(DEFAULT_TITLES, type) || typeTitle(data.type),
    subtitle: first(data, "subtitle", "tagline"),
    paragraphs: paragraphs(data),
  };
  const cur = text(data.currency) || currency;
  if (type === "hero") return { ...base, kind: "hero", links: ctas(data) };
  if (type === "menu") {
    const groups = [{ title: "", items: items(data.items, cur) }];
    for (const group of list(data.categories).length ? list(data.categories) : list(data.groups)) {
      if (!isObject(group)) continue;
      groups.push({ title: first(group, "name", "title"), items: items(group.items, cur) });
    }
    return { ...base, kind: "menu", groups: groups.filter((g) => g.items.length) };
  }
  if (type === "hours") return { ...base, kind: "hours", rows: hours(data) };
  if (type === "contact") {
    return { ...base, kind: "contact", links: contactLinks(data), address: text(data.address) };
  }
  if (type === "gallery") return { ...base, kind: "gallery", images: images(data) };
  const found = items(data.items, cur);
  return { ...base, items: found.length ? found : items(data.features, cur) };
}

function uniqueAnchor(data, index, used) {
  const base = [text(data.id), slug(data.type), `section-${index}`].find((c) => ANCHOR.test(c));
  let anchor = base;
  for (let n = 2; used.has(anchor); n += 1) anchor = `${base}-${n}`;
  used.add(anchor);
  return anchor;
}

function page(raw) {
  const data = isObject(raw) ? raw : {};
  const language = text(data.language) || "en";
  const lang = LANG.test(language) ? language : "en";
  const used = new Set(["top", "main", "content"]);
  let hero = null;
  const sections = [];
  list(data.sections).forEach((entry, i) => {
    if (!isObject(entry)) return;
    const built = section(entry, uniqueAnchor(entry, i + 1, used), text(data.currency));
    if (built.kind === "hero" && !hero) hero = built;
    else sections.push(built.kind === "hero" ? { ...built, kind: "cards", links: [] } : built);
  });
  return {
    name: text(data.name) || "Untitled site",
    tagline: text(data.tagline),
    lang,
    dir: RTL_LANGUAGES.has(lang.split("-")[0].toLowerCase()) ? "rtl" : "ltr",
    theme: theme(data.theme),
    hero,
    sections,
  };
}

// ---- page model -> DOM --------------------------------------------------------------------

// Creates an element; attribute names are ours, values and children from data go in as text.
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value) node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child instanceof Node) node.append(child);
    else if (child) node.append(document.createTextNode(String(child)));
  }
  return node;
}

function tags(values) {
  if (!values.length) return null;
  return h("ul", { class: "tags", "aria-label": "Tags" }, values.map((t) => h("li", {}, t)));
}

function sectionBody(s) {
  if (s.kind === "menu") {
    return s.groups.map((g) => [
      g.title ? h("h3", {}, g.title) : null,
      h("ul", { class: "menu" }, g.items.map((i) =>
        h("li", { class: "menu__item" },
          h("div", { class: "menu__head" },
            h("span", { class: "menu__name" }, i.title),
            i.price ? h("span", { class: "menu__price" }, i.price) : null),
          i.text ? h("p", { class: "menu__desc" }, i.text) : null,
          tags(i.tags)))),
    ]);
  }
  if (s.kind === "hours") {
    if (!s.rows.length) return null;
    const rows = s.rows.map(([label, value]) =>
      h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, value)));
    return h("table", { class: "hours" }, h("tbody", {}, rows));
  }
  if (s.kind === "contact") {
    return [
      s.address ? h("address", { class: "contact__address" }, s.address) : null,
      s.links.length
        ? h("ul", { class: "contact" }, s.links.map((l) =>
            h("li", {}, h("span", { class: "contact__label" }, l.label), " ",
              l.href ? h("a", { href: l.href }, l.text) : l.text)))
        : null,
    ];
  }
  if (s.kind === "gallery") {
    if (!s.images.length) return null;
    return h("ul", { class: "gallery" }, s.images.map((img) => {
      const image = h("img", { src: img.src, loading: "lazy" });
      image.alt = img.alt;
      const caption = img.caption ? h("figcaption", {}, img.caption) : null;
      return h("li", {}, h("figure", {}, image, caption));
    }));
  }
  if (!s.items || !s.items.length) return null;
  return h("ul", { class: "cards" }, s.items.map((i) =>
    h("li", { class: "card" },
      i.title ? h("h3", { class: "card__title" }, i.title) : null,
      i.price ? h("p", { class: "card__price" }, i.price) : null,
      i.text ? h("p", { class: "card__text" }, i.text) : null,
      tags(i.tags))));
}

function renderSection(s) {
  const labelledBy = s.title ? `${s.anchor}-title` : "";
  return h("section", { class: `section section--${s.type}`, id: s.anchor, "aria-labelledby": labelledBy },
    h("div", { class: "container" },
      s.title ? h("h2", { class: "section__title", id: `${s.anchor}-title` }, s.title) : null,
      s.subtitle ? h("p", { class: "section__subtitle" }, s.subtitle) : null,
      s.paragraphs.length ? h("div", { class: "prose" }, s.paragraphs.map((p) => h("p", {}, p))) : null,
      sectionBody(s)));
}

function renderHero(p) {
  const hero = p.hero;
  return h("section", { class: "hero", id: "top", "aria-labelledby": "site-name" },
    h("div", { class: "container" },
      h("h1", { id: "site-name" }, p.name),
      p.tagline ? h("p", { class: "tagline" }, p.tagline) : null,
      hero && hero.title ? h("h2", { class: "hero__title" }, hero.title) : null,
      hero && hero.subtitle ? h("p", { class: "hero__subtitle" }, hero.subtitle) : null,
      hero ? hero.paragraphs.map((para) => h("p", {}, para)) : null,
      hero && hero.links.length
        ? h("p", { class: "hero__actions" },
            hero.links.map((l) => h("a", { class: "button", href: l.href }, l.text)))
        : null));
}

function applyHead(p) {
  const root = document.documentElement;
  root.lang = p.lang;
  root.dir = p.dir;
  document.title = p.name;
  const { primary, accent, onPrimary, onAccent, ink } = p.theme;
  const vars = { primary, accent, "on-primary": onPrimary, "on-accent": onAccent, ink };
  for (const [name, value] of Object.entries(vars)) root.style.setProperty(`--${name}`, value);
  if (p.theme.font) root.style.setProperty("--font", `"${p.theme.font}", var(--font-fallback)`);
  document.head.append(h("meta", { name: "theme-color", content: p.theme.primary }));
  if (p.tagline) document.head.append(h("meta", { name: "description", content: p.tagline }));
}

function render(p, app) {
  applyHead(p);
  const nav = p.sections.filter((s) => s.title).slice(0, NAV_LIMIT);
  app.replaceChildren(
    h("header", { class: "site-header" },
      h("div", { class: "container site-header__inner" },
        h("a", { class: "brand", href: "#top" }, p.name),
        nav.length
          ? h("nav", { "aria-label": "Sections" },
              h("ul", { class: "nav" },
                nav.map((s) => h("li", {}, h("a", { href: `#${s.anchor}` }, s.title)))))
          : null)),
    h("main", { id: "main" }, renderHero(p), p.sections.map(renderSection)),
    h("footer", { class: "site-footer" }, h("div", { class: "container" }, h("p", {}, `© ${p.name}`))),
  );
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

async function main() {
  const app = document.getElementById("app");
  try {
    const response = await fetch("./prompt.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`prompt.json: HTTP ${response.status}`);
    render(page(await response.json()), app);
  } catch (error) {
    console.error(error);
    const message = h("p", {}, "This preview could not load its content.");
    app.replaceChildren(h("main", { id: "main", class: "container status" }, message));
  }
}

main();
