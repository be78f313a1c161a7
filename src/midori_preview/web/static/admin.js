// The admin page: a live table of sandboxes, the reaper's state and actions, and charts of
// preview time per day (per user, per project) drawn as plain SVG.
import { createPreviewClient, explainError, PreviewApiError } from "./preview-client.js";
import { formatDuration, setupAuth } from "./session.js";

const $ = (id) => document.getElementById(id);
const API = "/api/preview";
const REFRESH_MS = 3000;
const USAGE_EVERY = 10; // refreshes: the charts follow every 30 s
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f7d4f", "#6b4226", "#1a73e8", "#c2185b", "#e8a33d", "#5e35b1", "#00897b", "#8d6e63"];

const auth = setupAuth({ defaultUser: "admin", role: "admin" });
const client = createPreviewClient(auth.clientOptions);
let refreshTimer = null;

// --- helpers ------------------------------------------------------------------------------

function showError(err) {
  const { title, advice } = explainError(err);
  $("error-title").textContent = title;
  $("error-advice").textContent =
    err instanceof PreviewApiError && (err.status === 401 || err.status === 403)
      ? "This page needs the admin role: sign in as an admin (dev mode: any user id with the admin role is sent)."
      : advice;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  return seconds < 1 ? "now" : `${formatDuration(seconds)} ago`;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function facts(dl, entries) {
  dl.replaceChildren();
  for (const [label, value, state] of entries) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = String(value);
    if (state) dd.dataset.state = state;
    div.append(dt, dd);
    dl.append(div);
  }
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

// --- reaper -------------------------------------------------------------------------------

async function loadStats() {
  const { stats } = await client.request("GET", `${API}/cleanup`);
  const last = Object.entries(stats.lastRun ?? {})
    .map(([k, v]) => `${k} ${v}`)
    .join(" · ");
  facts($("reaper-state"), [
    ["Reaper", stats.isServiceRunning ? "running" : stats.paused ? "paused" : "not scheduled here",
      stats.isServiceRunning ? "ok" : "off"],
    ["Last run", time(stats.lastRunAt)],
    ["Next run", time(stats.nextRunAt)],
    ["Last pass", last || "—"],
    ["Last sync", time(stats.lastSyncAt)],
  ]);
  facts($("counts"), [
    ["Total", stats.total],
    ["Running", stats.running],
    ["Building", stats.creating],
    ["Stopping", stats.stopping],
    ["Stopped", stats.stopped],
    ["Error", stats.error],
  ]);
}

// --- service figures (the headline of /metrics) ---------------------------------------------

function byKey(obj) {
  const parts = Object.entries(obj ?? {}).map(([k, v]) => `${k} ${v}`);
  return parts.length ? parts.join(" · ") : "—";
}

function seconds(value) {
  return value == null ? "—" : `${value.toFixed(value < 1 ? 3 : 1)} s`;
}

async function loadFigures() {
  const m = await client.request("GET", `${API}/admin/metrics`);
  facts($("figures"), [
    ["Creates", m.creates],
    ["Stops by reason", byKey(m.stopsByReason)],
    ["Quota refusals", byKey(m.quotaRejections)],
    ["Time to ready (mean)", seconds(m.meanTimeToReadySeconds)],
    ["Preview time charged", formatDuration(m.usageChargedSeconds)],
    ["Requests", m.requests],
    ["Server errors (5xx)", m.serverErrors, m.serverErrors ? "off" : "ok"],
    ["Request time (mean)", seconds(m.meanRequestSeconds)],
    ["Provider errors", byKey(m.providerErrors)],
    ["GitHub deliveries", byKey(m.githubDeliveries)],
  ]);
}

async function act(action, button) {
  const out = $("action-result");
  button.disabled = true;
  out.textContent = `${button.textContent}…`;
  try {
    const res = await client.request("POST", `${API}/cleanup`, { body: { action } });
    const parts = Object.entries(res.result ?? {}).map(([k, v]) => `${k}: ${v}`);
    out.textContent = `${button.textContent}: done${parts.length ? ` — ${parts.join(", ")}` : ""}`;
    out.dataset.action = action;
    clearError();
    await refresh();
  } catch (err) {
    out.textContent = `${button.textContent}: failed`;
    showError(err);
  } finally {
    button.disabled = false;
  }
}

for (const button of document.querySelectorAll("button.action")) {
  button.addEventListener("click", () => act(button.dataset.action, button));
}

// --- sandboxes ----------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function loadSandboxes() {
  const { sandboxes } = await client.request("GET", `${API}/admin/sandboxes`);
  const body = $("sandboxes").querySelector("tbody");
  body.replaceChildren();
  for (const s of sandboxes) {
    const tr = document.createElement("tr");
    tr.dataset.sandboxId = s.sandboxId;
    tr.dataset.status = s.status;
    const status = cell(s.status, "status");
    status.dataset.state = s.status;
    const heartbeat = s.lastHeartbeatAt ? `${ago(s.lastHeartbeatAt)}${s.visible === false ? " (hidden)" : ""}` : "—";
    tr.append(
      cell(s.sandboxId, "mono"),
      cell(s.userId),
      cell(s.projectId),
      status,
      cell(ago(s.createdAt).replace(" ago", "")),
      cell(heartbeat),
      cell(s.reason ?? ""),
    );
    body.append(tr);
  }
  if (!sandboxes.length) {
    const tr = document.createElement("tr");
    const td = cell("No sandboxes right now.", "muted");
    td.colSpan = 7;
    tr.append(td);
    body.append(tr);
  }
  $("table-status").textContent = `${sandboxes.length} sandbox(es) · updated ${new Date().toLocaleTimeString()}`;
}

// --- usage charts -------------------------------------------------------------------------

function formatAxis(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function niceMax(value) {
  if (value <= 0) return 60;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600];
  return steps.find((s) => s * 4 >= value) * 4 || Math.ceil(value / 86400) * 86400;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A stacked bar chart of seconds per day per key, with a legend and the same data as a table.
 * @param {HTMLElement} figure
 * @param {string[]} days
 * @param {Map<string, Map<string, number>>} byKey key → day → seconds
 */
function drawChart(figure, days, byKey) {
  for (const old of figure.querySelectorAll("svg, .legend, details, .empty")) old.remove();
  const keys = [...byKey.keys()].sort();
  const totals = days.map((d) => keys.reduce((sum, k) => sum + (byKey.get(k).get(d) ?? 0), 0));
  if (!keys.length) {
    const p = document.createElement("p");
    p.className = "empty muted";
    p.textContent = "No preview time in this range.";
    figure.append(p);
    return;
  }
  const W = 640, H = 260, left = 56, right = 8, top = 10, bottom = 34;
  const plotW = W - left - right, plotH = H - top - bottom;
  const max = niceMax(Math.max(...totals));
  const total = totals.reduce((a, b) => a + b, 0);
  const svg = el("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", class: "bars",
    "aria-label": `${figure.querySelector("figcaption").textContent}: ${formatDuration(total)} of preview time over ${days.length} days, ${keys.length} series`,
  });
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    svg.append(el("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, formatAxis((max * i) / 4)));
  }
  const slot = plotW / days.length;
  const barW = Math.max(2, Math.min(40, slot * 0.7));
  const labelEvery = Math.ceil(days.length / 10);
  days.forEach((day, i) => {
    const x = left + slot * i + (slot - barW) / 2;
    let y = top + plotH;
    keys.forEach((key, k) => {
      const seconds = byKey.get(key).get(day) ?? 0;
      if (!seconds) return;
      const h = (plotH * seconds) / max;
      y -= h;
      const rect = el("rect", {
        x, y, width: barW, height: Math.max(h, 1), fill: PALETTE[k % PALETTE.length],
        class: "bar", "data-key": key, "data-day": day, "data-seconds": seconds,
      });
      rect.append(el("title", {}, `${day} · ${key}: ${formatDuration(seconds)}`));
      svg.append(rect);
    });
    if (i % labelEvery === 0) {
      svg.append(el("text", { x: x + barW / 2, y: H - bottom + 16, class: "axis", "text-anchor": "middle" }, day.slice(5)));
    }
  });
  figure.append(svg);

  const legend = document.createElement("ul");
  legend.className = "legend";
  keys.forEach((key, k) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[k % PALETTE.length];
    li.append(swatch, key);
    legend.append(li);
  });
  figure.append(legend);

  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Show as a table";
  const table = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of ["Day", ...keys]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    head.append(th);
  }
  table.append(head);
  for (const day of days) {
    if (!keys.some((k) => byKey.get(k).get(day))) continue;
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = day;
    tr.append(th, ...keys.map((k) => cell(formatDuration(byKey.get(k).get(day) ?? 0))));
    table.append(tr);
  }
  details.append(summary, table);
  figure.append(details);
}

async function loadUsage() {
  const n = Number($("range").value);
  // One day of slack each side: the service's usage day may be in another time zone.
  const to = new Date(Date.now() + 86400000);
  const from = new Date(to.getTime() - n * 86400000);
  const days = [];
  for (let t = from.getTime(); t <= to.getTime(); t += 86400000) days.push(isoDay(new Date(t)));
  let totalSeconds = 0;
  for (const groupBy of ["user", "project"]) {
    const q = new URLSearchParams({ from: isoDay(from), to: isoDay(to), groupBy });
    const report = await client.request("GET", `${API}/usage/report?${q}`);
    const byKey = new Map();
    for (const row of report.rows) {
      if (!row.previewSeconds) continue;
      if (!byKey.has(row.key)) byKey.set(row.key, new Map());
      byKey.get(row.key).set(row.day, row.previewSeconds);
    }
    drawChart($(`chart-${groupBy}`), days, byKey);
    totalSeconds = report.totals.previewSeconds;
  }
  $("usage-totals").textContent = `${formatDuration(totalSeconds)} of preview time from ${isoDay(from)} to ${isoDay(to)}.`;
}

$("range").addEventListener("change", () => loadUsage().catch(showError));

// --- refresh ------------------------------------------------------------------------------

async function refresh() {
  try {
    await Promise.all([loadStats(), loadSandboxes(), loadFigures()]);
    clearError();
  } catch (err) {
    showError(err);
  }
}

function schedule() {
  clearInterval(refreshTimer);
  let ticks = 0;
  if ($("live").checked) refreshTimer = setInterval(() => {
    if (document.visibilityState !== "visible") return;
    refresh();
    ticks += 1;
    if (ticks % USAGE_EVERY === 0) loadUsage().catch(showError);
  }, REFRESH_MS);
}

$("live").addEventListener("change", schedule);
$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  refresh();
  loadUsage().catch(showError);
});
for (const id of ["user-id", "token"]) {
  $(id).addEventListener("change", () => {
    refresh();
    loadUsage().catch(showError);
  });
}

refresh();
loadUsage().catch(showError);
schedule();
