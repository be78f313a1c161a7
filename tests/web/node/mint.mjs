// Mints real session cookies with the real libraries: NextAuth v4 (`next-auth/jwt` encode) and
// Auth.js v5 (`@auth/core/jwt` encode), chunked the way each library chunks a large cookie.
//
// stdin:  a JSON list of requests
//   {"format": "v4" | "v5", "claims": {...}, "secret": "..." | ["...", ...],
//    "maxAge"?: seconds (negative = already expired), "salt"?: v5 salt (default: cookieName),
//    "cookieName"?: default next-auth.session-token (v4) / authjs.session-token (v5)}
// stdout: a JSON list, one per request: {"token": "...", "cookies": [{"name", "value"}, ...]}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

import { encode as encodeV5 } from "@auth/core/jwt";
// The chunkers are internal modules of each library (not in their export maps): load by path.
import { SessionStore as SessionStoreV5 } from "./node_modules/@auth/core/lib/utils/cookie.js";

const require = createRequire(import.meta.url);
const { encode: encodeV4 } = require("next-auth/jwt");
const { SessionStore: SessionStoreV4 } = require("./node_modules/next-auth/core/lib/cookie.js");

const quiet = { debug() {}, warn() {}, error() {} };

async function mint(req) {
  const v5 = req.format === "v5";
  const cookieName = req.cookieName ?? (v5 ? "authjs.session-token" : "next-auth.session-token");
  const maxAge = req.maxAge ?? 3600;
  const token = v5
    ? await encodeV5({ token: req.claims, secret: req.secret, salt: req.salt ?? cookieName, maxAge })
    : await encodeV4({ token: req.claims, secret: req.secret, maxAge });
  const option = { name: cookieName, options: { httpOnly: true, path: "/", sameSite: "lax" } };
  const store = v5
    ? new SessionStoreV5(option, {}, quiet)
    : new SessionStoreV4(option, { cookies: {}, headers: {} }, quiet);
  const cookies = store.chunk(token, {}).map((c) => ({ name: c.name, value: c.value }));
  return { token, cookies };
}

const requests = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const req of requests) out.push(await mint(req));
process.stdout.write(JSON.stringify(out));
