// Live updates (/__midori/reload.js, added by the preview gateway to a running preview's pages):
// when a newer version of the preview goes live, reload this page and keep its scroll position.
// It only listens on this host's own event channel: no heartbeat, nothing kept alive.
"use strict";
(function () {
  const script = document.currentScript;
  const version = Number((script && script.dataset.midoriVersion) || 0);
  // Where the reader was, kept in the history entry (survives the reload; unlike storage, it
  // is there in a cross-site iframe too).
  const KEY = "__midoriPreviewScroll";
  const TERMINAL = ["stopped", "error", "stopping"];

  function restore() {
    const state = history.state;
    if (!state || typeof state !== "object" || !state[KEY]) return;
    const saved = state[KEY];
    const rest = Object.assign({}, state);
    delete rest[KEY];
    try {
      history.replaceState(Object.keys(rest).length ? rest : null, "");
    } catch (e) {
      /* keep going: the position is still known */
    }
    // A page that renders its content late (fetched data) grows after load: scroll again as it
    // grows, until the position is reached, the reader scrolls, or a few seconds passed.
    let over = false;
    const observer = window.ResizeObserver ? new ResizeObserver(() => attempt()) : null;
    const stop = () => {
      over = true;
      if (observer) observer.disconnect();
    };
    const attempt = () => {
      if (over) return;
      window.scrollTo(saved.x, saved.y);
      if (Math.abs(scrollY - saved.y) < 2 && Math.abs(scrollX - saved.x) < 2) stop();
    };
    if (observer) observer.observe(document.documentElement);
    for (const name of ["wheel", "touchstart", "keydown"]) {
      window.addEventListener(name, stop, { once: true, passive: true });
    }
    window.addEventListener("load", attempt, { once: true });
    setTimeout(stop, 5000);
    attempt();
  }

  function reload() {
    const state = history.state;
    if (state === null || (typeof state === "object" && !Array.isArray(state))) {
      try {
        history.replaceState(Object.assign({}, state, { [KEY]: { x: scrollX, y: scrollY } }), "");
      } catch (e) {
        /* refused: the browser's own scroll restoration still applies */
      }
    }
    location.reload();
  }

  restore();
  if (!window.EventSource) return;
  const source = new EventSource("/__midori/events?version=" + version);
  source.addEventListener("updated", (event) => {
    let data = {};
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (Number(data.version) > version) {
      source.close();
      reload();
    }
  });
  source.addEventListener("status", (event) => {
    try {
      if (TERMINAL.includes(JSON.parse(event.data).status)) source.close();
    } catch (e) {
      /* ignore */
    }
  });
})();
