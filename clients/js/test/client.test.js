// The package's own tests (node --test): the client against a recording fetch, no browser.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import {
  createPreviewClient,
  explainError,
  parseEventStream,
  PreviewApiError,
  stoppedMessage,
} from "../preview-client.js";

function recorder(answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    const [status, body, headers] = answers.shift();
    return new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json", ...(headers ?? {}) },
    });
  };
  return { calls, fetch };
}

const UPDATED = {
  sandboxId: "abc",
  version: 2,
  updatedAt: "2026-12-02T10:00:00Z",
  changed: true,
  superseded: false,
  uploaded: ["index.html"],
  deleted: [],
  rebuilt: false,
};

test("update() PUTs the source (without projectId or replace) with the caller's token", async () => {
  const { calls, fetch } = recorder([[200, UPDATED]]);
  const client = createPreviewClient({ baseUrl: "https://svc.example/", token: async () => "tok", fetch });
  const done = await client.update("a/b", { projectId: "p", replace: true, promptJson: { name: "x" } });
  assert.deepEqual(done, UPDATED);
  assert.equal(calls[0].url, "https://svc.example/api/preview/daytona/a%2Fb/source");
  assert.equal(calls[0].init.method, "PUT");
  assert.equal(calls[0].init.headers.Authorization, "Bearer tok");
  assert.equal(calls[0].init.headers["Content-Type"], "application/json");
  assert.deepEqual(calls[0].body, { promptJson: { name: "x" } });
});

test("a restart after an update starts what the preview shows now", async () => {
  const created = { sandboxId: "abc", projectId: "p", status: "requested" };
  const { calls, fetch } = recorder([[202, created], [200, UPDATED], [202, { ...created, sandboxId: "def" }]]);
  const client = createPreviewClient({ fetch });
  await client.startPreview({ projectId: "p", promptJson: { name: "one" }, template: "static" });
  await client.update("abc", { promptJson: { name: "two" } });
  await client.restart("abc");
  assert.deepEqual(calls[2].body, {
    projectId: "p",
    promptJson: { name: "two" },
    template: "static",
    replace: true,
  });
});

test("update errors carry the service's code and details", async () => {
  const error = {
    error: {
      code: "source_incompatible",
      message: "This preview cannot take that source (template differ); start a new preview.",
      differences: { template: { preview: "static", update: "vite" } },
    },
  };
  const { fetch } = recorder([[409, error]]);
  const client = createPreviewClient({ fetch });
  await assert.rejects(client.update("abc", { promptJson: {}, template: "vite" }), (err) => {
    assert.ok(err instanceof PreviewApiError);
    assert.equal(err.status, 409);
    assert.equal(err.code, "source_incompatible");
    assert.deepEqual(err.details.differences.template, { preview: "static", update: "vite" });
    assert.match(explainError(err).advice, /new preview/);
    return true;
  });
});

test("a rate-limited update reports when to try again", async () => {
  const body = { error: { code: "rate_limited", message: "Too many updates; try again in 7 s." } };
  const { fetch } = recorder([[429, body, { "retry-after": "7" }]]);
  const client = createPreviewClient({ fetch });
  await assert.rejects(client.update("abc", { promptJson: {} }), (err) => err.details.retryAfterSeconds === 7);
});

test("parseEventStream reads updated events", async () => {
  const text = 'id: 1-0\nevent: updated\ndata: {"version": 3}\n\n: ping\n\n';
  const body = new Response(text).body;
  const events = [];
  for await (const event of parseEventStream(body)) events.push(event);
  assert.deepEqual(events, [{ event: "updated", data: '{"version": 3}', id: "1-0", retry: null }]);
});

test("the types declare every export of the module", async () => {
  const module = await import("../preview-client.js");
  const types = await readFile(new URL("../preview-client.d.ts", import.meta.url), "utf8");
  for (const name of Object.keys(module)) {
    assert.match(types, new RegExp(`export declare (const|class|function) ${name}\\b`), name);
  }
});

test("a preview stopped for going past a sandbox limit says which", () => {
  assert.match(stoppedMessage("sandbox_process_limit"), /too many processes/);
  assert.match(stoppedMessage("sandbox_disk_limit"), /too much disk/);
});
