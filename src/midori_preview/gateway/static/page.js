// The gateway's own pages (served from /__midori/page.js: no inline script under their CSP).
// Building: follow the build on this host's own event channel and turn into the site when it
// runs (or into the stopped page when it ends). Stopped: offer the embedding page a restart.
"use strict";

const RESTART = "midori-preview:restart";
const STEPS = ["requested", "creating", "uploading", "installing", "building", "starting", "running"];
const TERMINAL = ["stopped", "error"];
const MAX_LINES = 200;

const body = document.body;
const sandboxId = body.dataset.sandboxId || "";

function showStep(status) {
  const at = STEPS.indexOf(status);
  if (at < 0) return;
  for (const li of document.querySelectorAll("#steps li")) {
    const i = STEPS.indexOf(li.dataset.step);
    li.dataset.state = i < at ? "done" : i === at ? "current" : "pending";
  }
}

function follow() {
  const log = document.getElementById("log");
  let replaying = true; // the channel replays the whole build: it replaces the tail we rendered
  let leaving = false;
  const source = new EventSource("/__midori/events");
  const leave = () => {
    if (leaving) return;
    leaving = true;
    source.close();
    window.location.reload();
  };
  source.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    showStep(data.status);
    if (data.status === "running" || TERMINAL.includes(data.status) || data.status === "stopping") leave();
  });
  source.addEventListener("log", (event) => {
    const data = JSON.parse(event.data);
    if (replaying) {
      log.replaceChildren();
      replaying = false;
    }
    const li = document.createElement("li");
    li.dataset.stream = data.stream || "stdout";
    li.textContent = data.line || "";
    log.append(li);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  });
}

function offerRestart() {
  const button = document.getElementById("restart");
  if (!button || window.parent === window) return; // top level: nobody to ask
  button.hidden = false;
  const note = document.getElementById("restart-note");
  if (note) note.hidden = true;
  button.addEventListener("click", () => {
    window.parent.postMessage({ type: RESTART, sandboxId }, "*");
    button.disabled = true;
    button.textContent = "Starting again…";
  });
}

if (body.dataset.kind === "building") follow();
if (body.dataset.kind === "stopped") offerRestart();
