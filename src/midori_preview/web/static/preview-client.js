/**
 * midori-preview browser client: an ES module with no dependencies and no build step.
 *
 * ```js
 * import { createPreviewClient } from "https://preview.example.com/static/preview-client.js";
 * const client = createPreviewClient({ baseUrl: "https://preview.example.com", token: getJwt });
 * const created = await client.startPreview({ projectId, promptJson });
 * const events = client.subscribe(created.sandboxId, (e) => console.log(e.type, e.data));
 * // … once a `status` event says "running":
 * const { openUrl } = await client.getStatus(created.sandboxId);
 * const alive = client.keepAlive(created.sandboxId, {
 *   intervalSeconds: created.heartbeatIntervalSeconds,
 *   onQuotaLow: (usage) => warn(usage.remainingSecondsToday),
 *   onStopped: ({ reason }) => showStopped(reason),
 * });
 * ```
 *
 * A stopped preview's page (served by the service on the preview's own host) offers the user to
 * start it again: it posts `{type: "midori-preview:restart", sandboxId}` to the page embedding
 * it. `client.handleRestarts({onRestart})` answers that by starting a new preview of the same
 * source (one this client started), replacing the old one.
 *
 * Authentication: a bearer token (`token`, a string or a function returning one), extra headers
 * (`headers`, e.g. `X-User-Id` in the service's dev mode), or the browser's cookies (NextAuth /
 * Auth.js session cookie, sent with `credentials`). Event streams are read with `fetch()` so
 * that they carry the same headers as every other call; `EventSource` is used only when asked
 * for (`transport: "eventsource"`, cookies only) or when the browser cannot stream a response.
 *
 * @module preview-client
 */

/** Build steps in order; a template without install/build skips those two. */
export const STEPS = Object.freeze([
  "requested",
  "creating",
  "uploading",
  "installing",
  "building",
  "starting",
  "running",
]);

/** States after which a sandbox never changes again. */
export const TERMINAL_STATUSES = Object.freeze(["stopped", "error"]);

/** What a stopped preview's page posts to the embedding page to ask for a restart. */
export const RESTART_MESSAGE = "midori-preview:restart";

const API = "/api/preview";

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] The service's origin, e.g. "https://preview.example.com"
 *   (default: the page's own origin).
 * @property {string | (() => (string | null | undefined | Promise<string | null | undefined>))} [token]
 *   A bearer token, or a function returning the current one (called before every request).
 * @property {Record<string, string> | (() => Record<string, string>)} [headers] Extra headers on
 *   every request (e.g. `{"X-User-Id": "demo-user"}` against a dev-mode service).
 * @property {RequestCredentials} [credentials] Whether cookies go along: default "include" for
 *   another origin, "same-origin" otherwise.
 * @property {typeof fetch} [fetch] A fetch implementation (default: the global one).
 */

/**
 * @typedef {object} Created
 * @property {string} sandboxId
 * @property {string} projectId
 * @property {string} status
 * @property {string} statusUrl
 * @property {string} eventsUrl
 * @property {number} heartbeatIntervalSeconds
 */

/**
 * @typedef {object} Usage
 * @property {number} usedSecondsToday
 * @property {number} remainingSecondsToday
 * @property {"quota_low" | null} warning Set when little preview time is left today.
 * @property {string} day
 * @property {string} resetAt ISO time when the daily budget resets.
 */

/**
 * @typedef {object} PreviewStatus
 * @property {string} sandboxId
 * @property {string} projectId
 * @property {string} status One of {@link STEPS}, "stopping", "stopped" or "error".
 * @property {string | null} reason Why it stopped (user, idle, expired, quota, admin, error:<step> …).
 * @property {string | null} previewUrl The preview's URL (needs `previewToken` as a header); set
 *   while the preview is building or running.
 * @property {string | null} previewToken
 * @property {string | null} openUrl A signed, short-lived link that works anywhere — a new tab or
 *   a cross-site iframe — because its credential is part of the host name (no cookie needed).
 *   Set from the start: while the preview builds it shows the build, then turns into the site.
 * @property {{step: string, message: string, exitCode: number | null} | null} error
 * @property {string[]} logsTail
 * @property {Usage | null} usage
 * @property {number} version Which version of its source the preview serves (1: as created).
 * @property {string | null} updatedAt When that version went live (null: never updated).
 */

/**
 * @typedef {object} SourceUpdated
 * @property {string} sandboxId
 * @property {number} version The version the preview serves now.
 * @property {string | null} updatedAt
 * @property {boolean} changed False: it already served this source.
 * @property {boolean} superseded A newer update came meanwhile and won (its version is given).
 * @property {string[]} uploaded
 * @property {string[]} deleted
 * @property {boolean} rebuilt
 */

/**
 * @typedef {object} HeartbeatResult
 * @property {string} sandboxId
 * @property {string} status
 * @property {number} nextHeartbeatSeconds When to send the next one.
 * @property {Usage | null} usage
 */

/**
 * @typedef {object} PreviewEvent
 * @property {"status" | "log" | string} type
 * @property {any} data `status`: {status, reason?, step?, message?}; `log`: {step, stream, line}.
 * @property {string | null} id The event id (resume point).
 */

/** An error answer of the service: `status` (HTTP), `code` (stable, machine) and `message`. */
export class PreviewApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {Record<string, any>} [details] The rest of the error body (resetAt, reason, …).
   */
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "PreviewApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/**
 * What to tell a user about an error, and what they can do about it.
 * @param {unknown} err
 * @returns {{title: string, advice: string}}
 */
export function explainError(err) {
  if (!(err instanceof PreviewApiError)) {
    return {
      title: "The preview service cannot be reached.",
      advice: "Check your connection and try again.",
    };
  }
  const d = err.details ?? {};
  const at = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "midnight");
  switch (err.code) {
    case "concurrency_limit":
      return {
        title: err.message,
        advice: "Stop your other preview first, or replace it with this one.",
      };
    case "daily_quota_exhausted":
      return { title: err.message, advice: `Your preview time resets at ${at(d.resetAt)}.` };
    case "rate_limited":
      return {
        title: err.message,
        advice: `Wait ${d.retryAfterSeconds ?? "a few"} seconds, then start again.`,
      };
    case "quota_unavailable":
      return { title: err.message, advice: "This is on our side; try again in a minute." };
    case "validation_error":
      return { title: err.message, advice: "Fix the project JSON, then start again." };
    case "payload_too_large":
      return { title: err.message, advice: "Make the project smaller, then start again." };
    case "unauthorized":
      return { title: err.message, advice: "Sign in again (or check the user id / token)." };
    case "forbidden":
      return { title: err.message, advice: "Use an account that is allowed to do this." };
    case "sandbox_not_found":
      return { title: "This preview no longer exists.", advice: "Start a new preview." };
    case "sandbox_stopped":
      return { title: stoppedMessage(d.reason), advice: "Start the preview again to keep looking." };
    case "source_incompatible":
      return { title: err.message, advice: "Start a new preview with this source." };
    case "rebuild_failed":
      return { title: err.message, advice: "Fix the build, then apply the changes again." };
    default:
      return { title: err.message, advice: "Try again; if it keeps failing, tell us." };
  }
}

/**
 * A sentence for why a preview stopped.
 * @param {string | null | undefined} reason
 * @returns {string}
 */
export function stoppedMessage(reason) {
  switch (reason) {
    case "user":
      return "The preview was stopped.";
    case "idle":
      return "The preview stopped because nobody was watching it.";
    case "expired":
      return "The preview reached its maximum lifetime.";
    case "quota":
      return "Today's preview time is used up; the preview was stopped.";
    case "admin":
      return "An administrator stopped the preview.";
    case "replaced":
      return "The preview was replaced by a newer one.";
    case "pagehide":
      return "The preview was stopped when you left the page.";
    case "sandbox_process_limit":
      return "The preview started too many processes and was stopped.";
    case "sandbox_disk_limit":
      return "The preview used too much disk space and was stopped.";
    default:
      if (reason && reason.startsWith("error:")) return `The preview failed at step “${reason.slice(6)}”.`;
      return "The preview is no longer running.";
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function errorFrom(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const e = body?.error ?? {};
  const { code, message, ...details } = e;
  const retry = res.headers.get("retry-after");
  if (retry && details.retryAfterSeconds === undefined) details.retryAfterSeconds = Number(retry);
  return new PreviewApiError(res.status, code ?? "http_error", message ?? `HTTP ${res.status}`, details);
}

/**
 * Server-Sent Events from a byte stream (the text/event-stream format, parsed by hand).
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<{event: string, data: string, id: string | null, retry: number | null}>}
 */
export async function* parseEventStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  let retry = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        if (!buffer.endsWith("\r")) return;
        buffer += "\n"; // a final CR ends its line
      } else {
        buffer += value;
      }
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (buffer[nl] === "\r" && nl === buffer.length - 1) break; // a \r\n may be split
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data.length) yield { event, data: data.join("\n"), id, retry };
          event = "message";
          data = [];
          retry = null;
          continue;
        }
        if (line.startsWith(":")) continue; // comment / ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
        else if (field === "retry" && /^\d+$/.test(val)) retry = Number(val);
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/** A client for one midori-preview service. */
export class PreviewClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    const here = globalThis.location?.origin;
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.token = options.token;
    this.headers = options.headers;
    const crossOrigin = this.baseUrl !== "" && this.baseUrl !== here;
    this.credentials = options.credentials ?? (crossOrigin ? "include" : "same-origin");
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    /** Headers of the last request: a page being hidden cannot wait for a token. */
    this._lastAuth = {};
    /** The create body of each preview this client started: what a restart starts again. */
    this._sources = new Map();
  }

  /** @returns {Promise<Record<string, string>>} */
  async _auth() {
    const extra = typeof this.headers === "function" ? this.headers() : this.headers;
    const out = { ...(extra ?? {}) };
    const token = typeof this.token === "function" ? await this.token() : this.token;
    if (token) out.Authorization = `Bearer ${token}`;
    this._lastAuth = out;
    return out;
  }

  /**
   * One JSON call; throws {@link PreviewApiError} for an error answer.
   * @param {string} method
   * @param {string} path
   * @param {{body?: any, headers?: Record<string, string>, signal?: AbortSignal}} [init]
   * @returns {Promise<any>}
   */
  async request(method, path, init = {}) {
    const headers = { Accept: "application/json", ...(await this._auth()), ...(init.headers ?? {}) };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await this.fetch(this.baseUrl + path, {
      method,
      headers,
      credentials: this.credentials,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: init.signal,
      cache: "no-store",
    });
    if (!res.ok) throw await errorFrom(res);
    return res.status === 204 ? null : res.json();
  }

  /**
   * Start a preview (answers at once; the build goes on in the background). A live preview of
   * the same project and source is answered as is (HTTP 200) instead of starting another.
   * @param {{projectId: string, promptJson?: object, template?: "static" | "vite",
   *   files?: {path: string, content: string, encoding?: "utf-8" | "base64"}[],
   *   git?: {url: string, ref?: string}, install?: string, build?: string, start?: string,
   *   port?: number, replace?: boolean}} body Exactly one source: promptJson, files or git.
   *   `replace: true` stops your oldest running preview when you are at your limit.
   * @param {{idempotencyKey?: string, signal?: AbortSignal}} [options]
   * @returns {Promise<Created>}
   */
  async startPreview(body, options = {}) {
    const headers = options.idempotencyKey ? { "Idempotency-Key": options.idempotencyKey } : {};
    const created = await this.request("POST", `${API}/daytona`, { body, headers, signal: options.signal });
    this._sources.set(created.sandboxId, body);
    return created;
  }

  /**
   * Update a running preview in place: the same sandbox and links, a new `version`; pages open
   * on it reload themselves (keeping their scroll position). An identical source is a no-op
   * (`changed: false`); a preview still building takes it once it runs; of concurrent updates
   * the newest wins (`superseded: true` on the others, with the version that won). Throws a
   * {@link PreviewApiError}: 409 `source_incompatible` (another template, port or start command:
   * `details.differences`), 410 `sandbox_stopped`, 422 `rebuild_failed` (the previous version
   * stays live), 429 `rate_limited`.
   * @param {string} sandboxId
   * @param {{promptJson?: object, template?: "static" | "vite",
   *   files?: {path: string, content: string, encoding?: "utf-8" | "base64"}[],
   *   deletions?: string[], install?: string, build?: string, start?: string, port?: number}}
   *   source The same shapes as a create's source (no `projectId`); `files` only need the
   *   changed ones.
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<SourceUpdated>}
   */
  async update(sandboxId, source, options = {}) {
    const { projectId, replace, git, ...body } = source ?? {};
    const path = `${API}/daytona/${encodeURIComponent(sandboxId)}/source`;
    const updated = await this.request("PUT", path, { body, signal: options.signal });
    const known = this._sources.get(sandboxId);
    if (known !== undefined && updated.changed && body.promptJson !== undefined) {
      this._sources.set(sandboxId, { ...known, ...body }); // a restart starts what it shows now
    }
    return updated;
  }

  /**
   * Start a new preview of the same source as `sandboxId` (a preview this client started),
   * replacing it if it still runs. Each preview is restarted at most once.
   * @param {string} sandboxId
   * @returns {Promise<Created>}
   */
  restart(sandboxId) {
    const body = this._sources.get(sandboxId);
    if (body === undefined) return Promise.reject(new Error(`unknown preview ${sandboxId}`));
    this._sources.delete(sandboxId);
    return this.startPreview({ ...body, replace: true });
  }

  /**
   * Answer the restart requests of stopped previews' pages (see {@link RESTART_MESSAGE}): a
   * message from a window `accept` approves (e.g. the iframe showing the preview), about a
   * preview this client started, starts it again with {@link PreviewClient#restart}.
   * @param {{onRestart: (created: Created, previousId: string) => void,
   *   onRestarting?: (previousId: string) => void, onError?: (err: unknown) => void,
   *   accept?: (event: MessageEvent) => boolean}} handlers
   * @returns {{stop: () => void}}
   */
  handleRestarts(handlers) {
    const onMessage = async (event) => {
      const data = event.data;
      if (data === null || typeof data !== "object" || data.type !== RESTART_MESSAGE) return;
      const id = data.sandboxId;
      if (typeof id !== "string" || !this._sources.has(id)) return;
      if (handlers.accept && !handlers.accept(event)) return;
      handlers.onRestarting?.(id);
      try {
        handlers.onRestart(await this.restart(id), id);
      } catch (err) {
        handlers.onError?.(err);
      }
    };
    globalThis.addEventListener?.("message", onMessage);
    return { stop: () => globalThis.removeEventListener?.("message", onMessage) };
  }

  /**
   * The sandbox's state; when it is running, `openUrl` is the link for an iframe or a new tab.
   * @param {string} sandboxId
   * @returns {Promise<PreviewStatus>}
   */
  getStatus(sandboxId) {
    return this.request("GET", `${API}/daytona/status?sandboxId=${encodeURIComponent(sandboxId)}`);
  }

  /**
   * Stop a preview (idempotent); its processes and files are gone when this resolves.
   * @param {string} sandboxId
   * @returns {Promise<PreviewStatus>}
   */
  stop(sandboxId) {
    return this.request("POST", `${API}/daytona/stop`, { body: { sandboxId } });
  }

  /**
   * Stop without waiting, in a way that survives the page going away (`fetch` keepalive; unlike
   * `sendBeacon` it can carry the Authorization header). Uses the last request's credentials.
   * @param {string} sandboxId
   */
  stopOnUnload(sandboxId) {
    try {
      this.fetch(this.baseUrl + `${API}/daytona/stop`, {
        method: "POST",
        keepalive: true,
        credentials: this.credentials,
        headers: { ...this._lastAuth, "Content-Type": "application/json" },
        body: JSON.stringify({ sandboxId }),
      }).catch(() => {});
    } catch {
      /* the page is going away; nothing to report to */
    }
  }

  /**
   * Tell the service someone is watching. Throws a 410 {@link PreviewApiError} once the
   * preview has stopped (`details.reason`: idle, quota, …).
   * @param {string} sandboxId
   * @param {boolean} [visible]
   * @returns {Promise<HeartbeatResult>}
   */
  heartbeat(sandboxId, visible = true) {
    return this.request("POST", `${API}/daytona/heartbeat`, { body: { sandboxId, visible } });
  }

  /** The caller's preview time today. @returns {Promise<Usage>} */
  getUsage() {
    return this.request("GET", `${API}/usage`);
  }

  /**
   * Follow a sandbox's events (`status` on every transition, `log` for each output line) until it
   * stops. Reconnects by itself (with `Last-Event-ID`, so nothing is missed or repeated) after
   * network errors; gives up on 4xx answers (reported to `onError`).
   * @param {string} sandboxId
   * @param {(event: PreviewEvent) => void} onEvent
   * @param {{onError?: (err: unknown, info: {willRetry: boolean}) => void, onOpen?: () => void,
   *   lastEventId?: string, maxRetryMs?: number, transport?: "fetch" | "eventsource"}} [options]
   * @returns {{close: () => void, done: Promise<void>}} `done` resolves when the stream is over
   *   (terminal status, `close()`, or a 4xx answer).
   */
  subscribe(sandboxId, onEvent, options = {}) {
    const url = `${this.baseUrl}${API}/daytona/events?sandboxId=${encodeURIComponent(sandboxId)}`;
    const canStream = typeof ReadableStream !== "undefined" && typeof TextDecoderStream !== "undefined";
    if (options.transport === "eventsource" || !canStream) return this._eventSource(url, onEvent, options);
    const abort = new AbortController();
    let lastId = options.lastEventId ?? null;
    let retryMs = 1000;
    const maxRetryMs = options.maxRetryMs ?? 10000;
    const done = (async () => {
      let failures = 0;
      while (!abort.signal.aborted) {
        try {
          const headers = { ...(await this._auth()), Accept: "text/event-stream" };
          if (lastId) headers["Last-Event-ID"] = lastId;
          const res = await this.fetch(url, {
            headers,
            credentials: this.credentials,
            signal: abort.signal,
            cache: "no-store",
          });
          if (!res.ok) {
            const err = await errorFrom(res);
            if (res.status >= 400 && res.status < 500 && res.status !== 429) {
              options.onError?.(err, { willRetry: false });
              return;
            }
            throw err;
          }
          failures = 0;
          options.onOpen?.();
          for await (const raw of parseEventStream(res.body)) {
            if (raw.id) lastId = raw.id;
            if (raw.retry) retryMs = raw.retry;
            let data = raw.data;
            try {
              data = JSON.parse(raw.data);
            } catch {
              /* plain text data */
            }
            onEvent({ type: raw.event, data, id: raw.id });
            if (raw.event === "status" && TERMINAL_STATUSES.includes(data?.status)) return;
          }
          // The server closed an unfinished stream (restart, proxy timeout): resume.
        } catch (err) {
          if (abort.signal.aborted) return;
          options.onError?.(err, { willRetry: true });
        }
        failures += 1;
        await sleep(Math.min(retryMs * 2 ** Math.min(failures - 1, 5), maxRetryMs), abort.signal);
      }
    })();
    return { close: () => abort.abort(), done };
  }

  /** EventSource: cookies only (it cannot send headers); the browser reconnects by itself. */
  _eventSource(url, onEvent, options) {
    let finish;
    const done = new Promise((resolve) => { finish = resolve; });
    const source = new EventSource(url, { withCredentials: this.credentials === "include" });
    const close = () => { source.close(); finish(); };
    const handle = (type) => (msg) => {
      let data = msg.data;
      try { data = JSON.parse(msg.data); } catch { /* plain text */ }
      onEvent({ type, data, id: msg.lastEventId || null });
      if (type === "status" && TERMINAL_STATUSES.includes(data?.status)) close();
    };
    source.addEventListener("status", handle("status"));
    source.addEventListener("log", handle("log"));
    source.addEventListener("open", () => options.onOpen?.());
    source.addEventListener("error", () => {
      const willRetry = source.readyState !== EventSource.CLOSED;
      options.onError?.(new Error("event stream interrupted"), { willRetry });
      if (!willRetry) close();
    });
    return { close, done };
  }

  /**
   * Keep a running preview alive while someone looks at it:
   * - heartbeats at the interval the service asks for (`nextHeartbeatSeconds`);
   * - when the tab is hidden, sends one `visible: false` heartbeat and pauses (the service then
   *   allows a shorter idle time, so a short tab switch does not kill the preview, a forgotten
   *   tab does not keep paying);
   * - when the tab is visible again, sends `visible: true` at once and resumes;
   * - on `pagehide` (tab closed, navigation away), stops the preview with a keepalive request.
   * @param {string} sandboxId
   * @param {{intervalSeconds?: number,
   *   onBeat?: (beat: HeartbeatResult & {visible: boolean, at: Date}) => void,
   *   onQuotaLow?: (usage: Usage) => void,
   *   onStopped?: (info: {reason: string | null, code: string, message: string}) => void,
   *   onPause?: () => void, onResume?: () => void,
   *   onError?: (err: unknown) => void, stopOnPageHide?: boolean}} [options]
   *   `onQuotaLow` is called after every heartbeat while the day's remaining time is low.
   *   `onStopped` once, when the service says the preview is gone (410/404) or the page hid.
   * @returns {{stop: () => void, beatNow: () => Promise<void>, readonly paused: boolean,
   *   readonly intervalSeconds: number}} `stop()` ends the heartbeats (it does not stop the
   *   preview: call {@link PreviewClient#stop} for that).
   */
  keepAlive(sandboxId, options = {}) {
    const doc = globalThis.document;
    let interval = options.intervalSeconds ?? 120;
    let timer = null;
    let active = true;
    let stoppedByPageHide = false;
    const hidden = () => doc?.visibilityState === "hidden";

    const schedule = (seconds) => {
      clearTimeout(timer);
      if (active && !hidden()) timer = setTimeout(() => beat(true), seconds * 1000);
    };
    const finish = () => {
      active = false;
      clearTimeout(timer);
      doc?.removeEventListener("visibilitychange", onVisibility);
      globalThis.removeEventListener?.("pagehide", onPageHide);
    };
    const beat = async (visible) => {
      if (!active) return;
      clearTimeout(timer);
      try {
        const res = await this.heartbeat(sandboxId, visible);
        if (!active) return;
        interval = res.nextHeartbeatSeconds || interval;
        options.onBeat?.({ ...res, visible, at: new Date() });
        if (res.usage?.warning === "quota_low") options.onQuotaLow?.(res.usage);
        if (visible) schedule(interval);
      } catch (err) {
        if (!active) return;
        if (err instanceof PreviewApiError && (err.status === 410 || err.status === 404)) {
          finish();
          globalThis.removeEventListener?.("pageshow", onPageShow);
          const reason = err.details?.reason ?? (err.status === 404 ? null : err.code);
          options.onStopped?.({ reason, code: err.code, message: err.message });
          return;
        }
        options.onError?.(err);
        if (visible) schedule(Math.min(interval, 10)); // retry sooner than a full interval
      }
    };
    const onVisibility = () => {
      if (!active) return;
      if (hidden()) {
        clearTimeout(timer);
        beat(false);
        options.onPause?.();
      } else {
        options.onResume?.();
        beat(true);
      }
    };
    const onPageHide = () => {
      if (!active || options.stopOnPageHide === false) return;
      finish();
      stoppedByPageHide = true;
      this.stopOnUnload(sandboxId);
    };
    const onPageShow = (event) => {
      // Back from the back/forward cache: the preview was stopped when the page hid.
      if (event.persisted && stoppedByPageHide) {
        stoppedByPageHide = false;
        globalThis.removeEventListener?.("pageshow", onPageShow);
        options.onStopped?.({ reason: "pagehide", code: "sandbox_stopped", message: stoppedMessage("pagehide") });
      }
    };

    doc?.addEventListener("visibilitychange", onVisibility);
    globalThis.addEventListener?.("pagehide", onPageHide);
    globalThis.addEventListener?.("pageshow", onPageShow);
    beat(!hidden());
    return {
      stop: () => {
        finish();
        globalThis.removeEventListener?.("pageshow", onPageShow);
      },
      beatNow: () => beat(!hidden()),
      get paused() {
        return !active || hidden();
      },
      get intervalSeconds() {
        return interval;
      },
    };
  }
}

/**
 * A client for one service.
 * @param {ClientOptions} [options]
 * @returns {PreviewClient}
 */
export function createPreviewClient(options) {
  return new PreviewClient(options);
}
