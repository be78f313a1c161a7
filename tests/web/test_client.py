"""`/static/preview-client.js` used directly in Chromium with a bearer token: the event stream
(read with fetch) survives a cut connection by resuming with Last-Event-ID — nothing lost,
nothing repeated — and ends by itself after the terminal status; errors carry the server's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser

from tests.conftest import Backend
from tests.web.conftest import bearer, live_server, watch

CLIENT_RUN = """
async ({ token }) => {
  const m = await import("/static/preview-client.js");
  const eventRequests = [];
  let cut = true;
  // The first event stream breaks after its first chunk, as a dropped connection would.
  const flaky = async (url, init) => {
    const res = await fetch(url, init);
    if (!String(url).includes("/daytona/events")) return res;
    eventRequests.push(init.headers["Last-Event-ID"] ?? null);
    if (!cut) return res;
    cut = false;
    const reader = res.body.getReader();
    let sent = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (sent) {
          reader.cancel();
          controller.error(new TypeError("network connection lost"));
          return;
        }
        const { value, done } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
        sent = true;
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const client = m.createPreviewClient({ token: () => token, fetch: flaky });

  const missing = await client.getStatus("nosuchsandbox").catch((e) => e);
  const created = await client.startPreview({
    projectId: "client-test",
    files: [{ path: "index.html", content: "<h1>client</h1>" }],
  });
  const events = [];
  const errors = [];
  const sub = client.subscribe(
    created.sandboxId,
    (e) => {
      events.push({ type: e.type, id: e.id, status: e.data?.status ?? null });
      if (e.type === "status" && e.data.status === "running") client.stop(created.sandboxId);
    },
    { onError: (err, info) => errors.push({ message: String(err), willRetry: info.willRetry }) },
  );
  await sub.done;
  return {
    missing: { name: missing.name, status: missing.status, code: missing.code,
               advice: m.explainError(missing).advice },
    events, errors, eventRequests,
  };
}
"""


async def test_client_resumes_a_cut_event_stream_without_loss_or_repeats(
    tmp_path: Path, browser: Browser
) -> None:
    async with live_server(
        tmp_path,
        Backend("embedded", None, None),
        auth_jwt_secret="service-jwt-secret-for-the-web-tests-0123456789",
    ) as live:
        page = await browser.new_page()
        problems = watch(page)
        await page.goto(f"{live.url}/test")
        result: dict[str, Any] = await page.evaluate(
            CLIENT_RUN, {"token": bearer(live.settings, "client-user")}
        )

        assert result["missing"] == {
            "name": "PreviewApiError",
            "status": 404,
            "code": "sandbox_not_found",
            "advice": "Start a new preview.",
        }
        statuses = [e["status"] for e in result["events"] if e["type"] == "status"]
        assert statuses[0] == "requested"
        assert statuses[-2:] == ["stopping", "stopped"]
        assert "running" in statuses
        ids = [e["id"] for e in result["events"] if e["id"]]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        # One cut, one resume from the last event seen before it.
        assert result["errors"] == [
            {"message": "TypeError: network connection lost", "willRetry": True}
        ]
        first, resumed = result["eventRequests"]
        assert first is None and resumed in ids
        before_cut = ids[: ids.index(resumed) + 1]
        assert before_cut[-1] == resumed and len(before_cut) < len(ids)
        assert [p for p in problems if "nosuchsandbox" not in p] == []  # that 404 was asked for
        await page.close()
