// Calls to the Confab API: the access token, kept in memory only; the
// refresh token, an HttpOnly cookie the page never sees; one refresh at a
// time, and one retry of a call whose access token had expired.

/** An answer of the API that is not a success, or no answer at all. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: no answer reached the page).
   * @param {string} code The API's error code (`NETWORK` for no answer).
   * @param {string} message What the API said.
   * @param {object} [extra] `field`, `requestId`, `retryAfter` (seconds).
   */
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = extra.field ?? null;
    this.requestId = extra.requestId ?? null;
    this.retryAfter = extra.retryAfter ?? null;
  }
}

let accessToken = null;
let refreshing = null;
let onSignedOut = () => {};

/** Whether the page holds an access token. */
export function signedIn() {
  return accessToken !== null;
}

/** What to do when the session ends (a refresh refused). */
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

/** The API error of a response that is not a success. */
export async function errorOf(res) {
  let detail = {};
  try {
    detail = (await res.json()).error ?? {};
  } catch {
    // Not the API's error shape (a proxy's page): the status says enough.
  }
  const retry = Number.parseInt(res.headers.get('retry-after') ?? '', 10);
  return new ApiError(
    res.status,
    detail.code ?? `HTTP_${res.status}`,
    detail.message ?? res.statusText ?? 'request failed',
    {
      field: detail.field,
      requestId: detail.request_id ?? res.headers.get('x-request-id'),
      retryAfter: Number.isFinite(retry) ? retry : null,
    },
  );
}

/** `fetch`, with a lost connection as an `ApiError` of status 0. */
async function reach(path, init) {
  try {
    return await fetch(path, { credentials: 'same-origin', cache: 'no-store', ...init });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'NETWORK', 'The connection to the server was lost.');
  }
}

/**
 * A new access token from the refresh cookie: `true`, or `false` when the
 * session is over (the server refused the cookie). Anything else (no
 * connection, a 429 or a 5xx) throws an `ApiError` and ends nothing.
 * Concurrent callers share one request: the cookie works once.
 */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      try {
        for (let attempt = 0; ; attempt += 1) {
          const res = await reach('/api/v1/auth/refresh', { method: 'POST' });
          if (res.ok) {
            accessToken = (await res.json()).access_token;
            return true;
          }
          if (res.status === 401 && attempt === 0) {
            // Another tab may have just used the cookie and been given the
            // next one: try once more with whatever the browser holds now.
            await new Promise((resolve) => setTimeout(resolve, 300));
            continue;
          }
          if (res.status === 401 || res.status === 403) {
            accessToken = null;
            return false;
          }
          throw await errorOf(res);
        }
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

/**
 * Calls the API with the access token. A 401 refreshes once and retries;
 * a second 401 ends the session. Answers the response when it is a
 * success, else throws its `ApiError`.
 * @param {string} path
 * @param {{method?: string, body?: any, headers?: object, signal?: AbortSignal}} [options]
 */
export async function api(path, options = {}) {
  const call = () => {
    const headers = { accept: 'application/json', ...options.headers };
    if (accessToken) headers.authorization = `Bearer ${accessToken}`;
    let body;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    return reach(path, { method: options.method ?? 'GET', headers, body, signal: options.signal });
  };
  let res = await call();
  if (res.status === 401 && accessToken !== null) {
    if (await refresh()) {
      res = await call();
    }
    if (res.status === 401) {
      accessToken = null;
      onSignedOut();
    }
  }
  if (!res.ok) throw await errorOf(res);
  return res;
}

/** Logs in; the refresh cookie is set by the answer. */
export async function login(username, password) {
  const res = await reach('/api/v1/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  if (!res.ok) throw await errorOf(res);
  accessToken = (await res.json()).access_token;
}

/** Opens an account (then log in). */
export async function register(username, email, password) {
  const res = await reach('/api/v1/auth/register', {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ username, email, password }),
  });
  if (!res.ok) throw await errorOf(res);
}

/** Ends the session here: its refresh family revoked, the cookie cleared. */
export async function logout() {
  try {
    await api('/api/v1/auth/logout', { method: 'POST' });
  } finally {
    accessToken = null;
  }
}
