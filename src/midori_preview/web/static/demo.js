// The demo page: start a preview of the example project, follow its build live, show it in an
// iframe while keeping it alive, and stop it (button, or leaving the page). A preview the service
// stopped (idle, quota…) stays in the iframe as the service's page saying why; its "Start it
// again" button asks this page (postMessage) to start a new preview of the same source.
import {
  createPreviewClient,
  explainError,
  PreviewApiError,
  STEPS,
  stoppedMessage,
} from "./preview-client.js";
import { formatDuration, setupAuth } from "./session.js";

const $ = (id) => document.getElementById(id);
const EXAMPLE_URL = "/static/examples/test-cafe.json";
const MAX_LOG_LINES = 500;
const THAI = /[\u0E00-\u0E7F]/;
const NARROW = window.matchMedia("(max-width: 900px)"); // one column: follow the action

const auth = setupAuth({ defaultUser: "demo-user" });
const client = createPreviewClient(auth.clientOptions);

let exampleText = "";
/** The preview being shown: its id, event stream, keep-alive and UI timers. */
let current = null;

// --- the project --------------------------------------------------------------------------

function textEl(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  if (THAI.test(text)) el.lang = "th";
  return el;
}

function renderProject(p) {
  const card = $("project-card");
  card.replaceChildren();
  card.append(textEl("h3", p.name ?? p.projectId ?? "Untitled project", "project-name"));
  if (p.tagline) card.append(textEl("p", p.tagline, "tagline"));
  const meta = [`projectId: ${p.projectId ?? "—"}`];
  if (p.language) meta.push(`language: ${p.language}`);
  card.append(textEl("p", meta.join(" · "), "muted small"));
  const sections = Array.isArray(p.sections) ? p.sections : [];
  if (sections.length) {
    const list = document.createElement("ul");
    list.className = "sections";
    list.setAttribute("aria-label", "Sections");
    for (const s of sections) {
      const li = document.createElement("li");
      li.append(textEl("span", s.type ?? "section", "tag"), " ", textEl("span", s.title ?? ""));
      if (Array.isArray(s.items) && s.items.length) {
        const items = document.createElement("ul");
        for (const item of s.items) {
          const price = item.price != null ? ` — ${item.price} ${item.currency ?? ""}`.trimEnd() : "";
          items.append(textEl("li", `${item.name ?? ""}${price}`));
        }
        li.append(items);
      }
      list.append(li);
    }
    card.append(list);
  }
}

/** @returns {object | null} the promptJson in the editor, or null (error shown). */
function readProject() {
  const box = /** @type {HTMLTextAreaElement} */ ($("prompt-json"));
  const error = $("json-error");
  try {
    const value = JSON.parse(box.value);
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Error("promptJson must be a JSON object");
    }
    error.textContent = "";
    box.removeAttribute("aria-invalid");
    return value;
  } catch (err) {
    error.textContent = `Not valid JSON: ${err.message}`;
    box.setAttribute("aria-invalid", "true");
    return null;
  }
}

async function loadExample() {
  try {
    const res = await fetch(EXAMPLE_URL, { cache: "no-cache" });
    exampleText = await res.text();
    $("prompt-json").value = exampleText;
    renderProject(JSON.parse(exampleText));
  } catch {
    $("project-card").replaceChildren(textEl("p", "Could not load the example project.", "field-error"));
  }
}

$("prompt-json").addEventListener("input", () => {
  const p = readProject();
  if (p) renderProject(p);
});
$("reset-json").addEventListener("click", () => {
  $("prompt-json").value = exampleText;
  const p = readProject();
  if (p) renderProject(p);
});

// --- build progress -----------------------------------------------------------------------

function renderSteps(status) {
  const list = $("steps");
  const at = STEPS.indexOf(status);
  list.replaceChildren();
  STEPS.forEach((step, i) => {
    const li = document.createElement("li");
    li.textContent = step;
    const reached = current?.seen.has(step);
    let state = "pending";
    if (i === at) state = status === "running" ? "done" : "current";
    else if (i < at) state = reached ? "done" : "skipped";
    li.dataset.state = state;
    if (state === "current") li.setAttribute("aria-current", "step");
    if (state === "skipped") li.title = "not needed for this project";
    list.append(li);
  });
  if (at >= 0) $("progress").value = at;
}

function setStatus(text) {
  $("status-line").textContent = text;
}

function tickElapsed() {
  if (!current) return;
  const seconds = (performance.now() - current.startedAt) / 1000;
  $("elapsed").textContent = `${seconds.toFixed(1)} s`;
}

function appendLog(step, stream, line) {
  const log = $("log");
  const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const li = document.createElement("li");
  li.dataset.stream = stream ?? "stdout";
  li.append(textEl("span", step ?? "", "log-step"), " ", textEl("span", line ?? ""));
  log.append(li);
  while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
  if (nearBottom) log.scrollTop = log.scrollHeight;
}

// --- errors -------------------------------------------------------------------------------

function showError({ title, advice }, actions = []) {
  $("error-title").textContent = title;
  $("error-advice").textContent = advice ?? "";
  const box = $("error-actions");
  box.replaceChildren();
  for (const { label, onClick, kind } of actions) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = kind ?? "secondary";
    b.textContent = label;
    b.addEventListener("click", onClick);
    box.append(b);
  }
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function errorActions(err) {
  if (err instanceof PreviewApiError && err.code === "concurrency_limit") {
    const others = err.details.activeSandboxIds ?? [];
    const actions = [{ label: "Replace it with this one", kind: "primary", onClick: () => start({ replace: true }) }];
    if (others.length) {
      actions.push({
        label: "Stop the other preview",
        onClick: async () => {
          await Promise.allSettled(others.map((id) => client.stop(id)));
          clearError();
          setStatus("The other preview was stopped. You can start this one now.");
        },
      });
    }
    return actions;
  }
  return [];
}

// --- the running preview ------------------------------------------------------------------

function renderQuota() {
  const q = current?.quota;
  if (!q) return;
  const elapsed = current.alive && !current.alive.paused ? (performance.now() - q.at) / 1000 : 0;
  const left = Math.max(0, q.remaining - elapsed);
  const pct = q.cap > 0 ? Math.max(0, Math.min(100, (left / q.cap) * 100)) : 0;
  $("quota-fill").style.width = `${pct}%`;
  const bar = $("quota-bar");
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  bar.setAttribute("aria-valuetext", `${formatDuration(left)} left of ${formatDuration(q.cap)}`);
  bar.classList.toggle("low", q.low);
  $("quota-text").textContent = `${formatDuration(left)} of ${formatDuration(q.cap)}`;
}

function setUsage(usage) {
  if (!usage || !current) return;
  const cap = usage.usedSecondsToday + usage.remainingSecondsToday;
  const low = usage.warning === "quota_low";
  current.quota = { remaining: usage.remainingSecondsToday, cap, low, at: performance.now() };
  const warning = $("quota-warning");
  if (low) {
    const reset = new Date(usage.resetAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const text =
      `Only ${formatDuration(usage.remainingSecondsToday)} of preview time left today. ` +
      `The preview stops when it runs out; your time resets at ${reset}.`;
    if (warning.textContent !== text) warning.textContent = text;
    warning.hidden = false;
  } else {
    warning.hidden = true;
  }
  renderQuota();
}

function setHeartbeat(state, text) {
  const el = $("heartbeat");
  el.dataset.state = state;
  $("heartbeat-text").textContent = text;
}

async function onRunning() {
  const c = current;
  if (c.running) return;
  c.running = true;
  // The build is over: from here on the heartbeat answers tell whether the preview still runs,
  // and no connection stays open per viewer.
  c.events?.close();
  $("stream-note").textContent = "";
  clearInterval(c.elapsedTimer);
  tickElapsed();
  const ready = ((performance.now() - c.startedAt) / 1000).toFixed(1);
  let status;
  try {
    status = await client.getStatus(c.sandboxId);
  } catch (err) {
    showError(explainError(err));
    return;
  }
  if (current !== c || status.status !== "running") return;
  setStatus(`Running — ready in ${ready} s.`);
  const frame = document.createElement("iframe");
  frame.id = "frame";
  frame.title = "Live preview of the project";
  frame.referrerPolicy = "no-referrer";
  // The preview may run scripts on its own origin, but not navigate this page.
  frame.sandbox.add("allow-scripts", "allow-same-origin", "allow-forms", "allow-popups");
  frame.src = status.openUrl;
  c.openUrl = status.openUrl;
  $("frame-box").replaceChildren(frame);
  $("open-link").href = status.openUrl;
  $("preview").hidden = false;
  $("stop").disabled = false;
  $("apply").disabled = false;
  if (NARROW.matches) $("preview").scrollIntoView({ block: "start" });
  setUsage(status.usage);
  c.quotaTimer = setInterval(renderQuota, 1000);
  c.beats = 0;
  c.alive = client.keepAlive(c.sandboxId, {
    intervalSeconds: c.interval,
    onBeat: (beat) => {
      c.beats += 1;
      $("heartbeat").dataset.beats = String(c.beats);
      const at = beat.at.toLocaleTimeString();
      setHeartbeat(
        beat.visible ? "ok" : "paused",
        beat.visible
          ? `Heartbeat ${c.beats} at ${at} · every ${beat.nextHeartbeatSeconds} s`
          : "Paused while this tab is hidden",
      );
      const dot = $("heartbeat").querySelector(".dot");
      dot.classList.remove("pulse");
      void dot.offsetWidth; // restart the animation
      dot.classList.add("pulse");
      setUsage(beat.usage);
    },
    onPause: () => setHeartbeat("paused", "Paused while this tab is hidden"),
    onResume: () => setHeartbeat("ok", "Resuming…"),
    onError: () => setHeartbeat("error", "Heartbeat failed; retrying…"),
    onStopped: ({ reason }) => finish("stopped", reason),
  });
}

function finish(status, reason, error) {
  const c = current;
  if (!c || c.finished) return;
  c.finished = true;
  $("apply").disabled = true;
  clearInterval(c.elapsedTimer);
  clearInterval(c.quotaTimer);
  c.alive?.stop();
  c.events?.close();
  const frame = $("frame");
  if (status === "stopped" && reason && reason !== "user" && frame && c.openUrl) {
    frame.src = c.openUrl; // the service's page: why it stopped, and a way to start it again
  } else {
    $("frame-box").replaceChildren();
    $("preview").hidden = true;
  }
  $("start").disabled = false;
  $("stop").disabled = true;
  setHeartbeat("idle", "Stopped");
  $("stream-note").textContent = "";
  if (status === "error") {
    const where = error?.step ?? (reason ?? "").replace(/^error:/, "");
    const code = error?.exitCode != null ? ` (exit code ${error.exitCode})` : "";
    setStatus(`Build failed at “${where || "unknown step"}”.`);
    showError({
      title: `The build failed at “${where || "unknown step"}”: ${error?.message ?? "see the log"}${code}.`,
      advice: "Read the log lines above for the cause, fix the project, then start again.",
    });
  } else {
    setStatus(stoppedMessage(reason));
    if (reason && reason !== "user") {
      showError({ title: stoppedMessage(reason), advice: "Start the preview again to keep looking." });
    }
  }
}

async function onStatusEvent(data) {
  const c = current;
  c.seen.add(data.status);
  if (STEPS.includes(data.status)) {
    renderSteps(data.status);
    if (data.status !== "running") setStatus(`${data.status[0].toUpperCase()}${data.status.slice(1)}…`);
  }
  if (data.status === "running") await onRunning();
  else if (data.status === "stopping") setStatus("Stopping…");
  else if (data.status === "error") {
    let error = data.step ? { step: data.step, message: data.message, exitCode: data.exitCode } : null;
    if (!error) {
      try {
        error = (await client.getStatus(c.sandboxId)).error;
      } catch {
        /* keep what the event said */
      }
    }
    finish("error", data.reason, error);
  } else if (data.status === "stopped") finish("stopped", data.reason);
}

function follow(created) {
  current?.events?.close();
  const c = {
    sandboxId: created.sandboxId,
    interval: created.heartbeatIntervalSeconds,
    startedAt: performance.now(),
    seen: new Set(),
    running: false,
    finished: false,
  };
  current = c;
  $("preview").dataset.sandboxId = c.sandboxId;
  c.elapsedTimer = setInterval(tickElapsed, 100);
  renderSteps(created.status);
  setStatus(`Preview ${c.sandboxId} requested…`);
  c.events = client.subscribe(
    c.sandboxId,
    (event) => {
      if (current !== c) return;
      if (event.type === "log") appendLog(event.data.step, event.data.stream, event.data.line);
      else if (event.type === "status") onStatusEvent(event.data);
    },
    {
      onOpen: () => {
        $("stream-note").textContent = "";
      },
      onError: (err, { willRetry }) => {
        if (current !== c || c.finished) return;
        if (willRetry) $("stream-note").textContent = "Live updates interrupted; reconnecting…";
        else showError(explainError(err));
      },
    },
  );
}

async function start({ replace = false } = {}) {
  const p = readProject();
  if (!p) {
    $("json-box").open = true;
    $("prompt-json").focus();
    return;
  }
  const template = /** @type {HTMLInputElement} */ (document.querySelector("input[name=template]:checked")).value;
  const projectId = String(p.projectId ?? "demo").replace(/[^A-Za-z0-9._:@-]/g, "-").slice(0, 200) || "demo";
  beginStarting("Starting…");
  try {
    started(await client.startPreview({ projectId, promptJson: p, template, replace }));
  } catch (err) {
    startFailed(err);
  }
}

/** Clear the page for a new preview (the one shown, if any, gives way: one at a time). */
function beginStarting(text) {
  if (current && !current.finished) {
    current.alive?.stop();
    current.events?.close();
    current.finished = true;
    clearInterval(current.elapsedTimer);
    clearInterval(current.quotaTimer);
  }
  clearError();
  $("apply").disabled = true;
  $("apply-note").textContent = "";
  $("log").replaceChildren();
  $("frame-box").replaceChildren();
  $("preview").hidden = true;
  $("start").disabled = true;
  $("progress").value = 0;
  $("elapsed").textContent = "0.0 s";
  setStatus(text);
}

function started(created) {
  follow(created);
  if (NARROW.matches) $("build-h").scrollIntoView({ block: "start" });
}

function startFailed(err) {
  current = null;
  $("start").disabled = false;
  setStatus("Could not start the preview.");
  showError(explainError(err), errorActions(err));
  if (NARROW.matches) $("error").scrollIntoView({ block: "center" });
}

// "Start it again" on the stopped preview's page (in our iframe): the same source, anew.
client.handleRestarts({
  accept: (event) => event.source === $("frame")?.contentWindow,
  onRestarting: () => beginStarting("Starting the preview again…"),
  onRestart: (created) => started(created),
  onError: (err) => startFailed(err),
});

$("start-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});

// "Apply changes": the edited promptJson goes into the running preview (same sandbox, same
// link); the page in the iframe reloads itself when the new version is live.
$("apply").addEventListener("click", async () => {
  const c = current;
  const p = readProject();
  if (!c || c.finished || !p) return;
  $("apply").disabled = true;
  $("apply-note").textContent = "Applying…";
  const at = performance.now();
  try {
    const done = await client.update(c.sandboxId, { promptJson: p });
    const ms = Math.round(performance.now() - at);
    $("apply-note").dataset.version = String(done.version);
    $("apply-note").textContent = done.changed
      ? `Applied: version ${done.version} (${ms} ms).`
      : done.superseded
        ? `A newer change won: version ${done.version}.`
        : `No changes: still version ${done.version}.`;
  } catch (err) {
    $("apply-note").textContent = "";
    showError(explainError(err));
  } finally {
    if (current === c && !c.finished) $("apply").disabled = false;
  }
});

$("stop").addEventListener("click", async () => {
  const c = current;
  if (!c) return;
  $("stop").disabled = true;
  setStatus("Stopping…");
  c.alive?.stop();
  try {
    const status = await client.stop(c.sandboxId);
    finish(status.status, status.reason);
  } catch (err) {
    $("stop").disabled = false;
    showError(explainError(err));
  }
});

// Leaving while the preview is still building: stop it too (keepAlive handles a running one).
window.addEventListener("pagehide", () => {
  if (current && !current.finished && !current.alive) client.stopOnUnload(current.sandboxId);
});

renderSteps("");
loadExample();
