/**
 * Who the pages call the service as: the auth fieldset shared by the demo and admin pages.
 *
 * - dev mode (no AUTH_JWT_SECRET on the service): the caller names itself (`X-User-Id`, and
 *   `X-User-Role: admin` on the admin page);
 * - jwt mode: a pasted bearer token, or — when the service reads NextAuth/Auth.js session
 *   cookies — nothing at all: the browser's session cookie goes along.
 * @module session
 */

const body = document.body;
/** "dev" or "jwt", filled in by the server. */
export const authMode = body.dataset.authMode === "jwt" ? "jwt" : "dev";
/** Whether the service reads NextAuth / Auth.js session cookies. */
export const cookieAuth = body.dataset.cookieAuth === "true";

/**
 * Wire the auth fieldset (`#auth`) and give the client options that follow it.
 * @param {{defaultUser: string, role?: "admin"}} options
 * @returns {{clientOptions: import("./preview-client.js").ClientOptions, userLabel: () => string}}
 */
export function setupAuth({ defaultUser, role }) {
  const devBox = document.getElementById("auth-dev");
  const jwtBox = document.getElementById("auth-jwt");
  const userInput = /** @type {HTMLInputElement} */ (document.getElementById("user-id"));
  const tokenInput = /** @type {HTMLInputElement} */ (document.getElementById("token"));
  const cookieNote = document.getElementById("cookie-note");
  const storeKey = `midori-preview:${role ?? "user"}`;

  devBox.hidden = authMode !== "dev";
  jwtBox.hidden = authMode !== "jwt";
  if (cookieNote) cookieNote.hidden = !cookieAuth;
  userInput.value = localStorage.getItem(`${storeKey}:user`) || defaultUser;
  tokenInput.value = sessionStorage.getItem(`${storeKey}:token`) || "";
  userInput.addEventListener("change", () => localStorage.setItem(`${storeKey}:user`, userInput.value.trim()));
  tokenInput.addEventListener("change", () => sessionStorage.setItem(`${storeKey}:token`, tokenInput.value.trim()));

  return {
    clientOptions: {
      headers: () => {
        if (authMode !== "dev") return {};
        const h = { "X-User-Id": userInput.value.trim() || defaultUser };
        if (role) h["X-User-Role"] = role;
        return h;
      },
      token: () => (authMode === "jwt" ? tokenInput.value.trim() || null : null),
    },
    userLabel: () => (authMode === "dev" ? userInput.value.trim() || defaultUser : "you"),
  };
}

/**
 * "1 min 05 s", "42 s".
 * @param {number} seconds
 */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}
