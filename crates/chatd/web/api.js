// REST and long-poll HTTP calls. One token works on both doors: /api/v10 (Discord-shaped) and /api/v1 (IRC-style).

const TOKEN_KEY = 'chatd.token';

export const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY); },
  set(token) { localStorage.setItem(TOKEN_KEY, token); },
  clear() { localStorage.removeItem(TOKEN_KEY); sessionStorage.removeItem('chatd.gw'); },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(status, body));
    this.status = status;
    this.body = body;
  }
}

// REST answers {code, message, errors}; long-poll answers {error, message, numeric}.
function errorText(status, body) {
  if (!body || typeof body !== 'object') return `Request failed (${status})`;
  let msg = body.message || body.error || `Request failed (${status})`;
  if (body.errors && typeof body.errors === 'object') {
    const fields = [];
    const walk = (o, path) => {
      if (!o || typeof o !== 'object') return;
      if (Array.isArray(o._errors)) fields.push(`${path}: ${o._errors.map((e) => e.message).join(', ')}`);
      for (const [k, v] of Object.entries(o)) if (k !== '_errors') walk(v, path ? `${path}.${k}` : k);
    };
    walk(body.errors, '');
    if (fields.length) msg = fields.join('; ');
  }
  if (status === 429 && body.retry_after) msg += ` (retry in ${Math.ceil(body.retry_after)} s)`;
  return msg;
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

async function request(method, url, body, opts = {}) {
  const headers = {};
  const token = auth.token;
  if (token && !opts.noAuth) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body: payload, signal: opts.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: 'Network error: the server cannot be reached' });
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!res.ok) {
    if (res.status === 401 && token && !opts.noAuth) onUnauthorized();
    throw new ApiError(res.status, data);
  }
  return data;
}

/** Discord-shaped REST: rest('GET', '/users/@me'). */
export const rest = (method, path, body, opts) => request(method, `/api/v10${path}`, body, opts);
/** IRC-style door: lp('POST', '/messages', {...}). */
export const lp = (method, path, body, opts) => request(method, `/api/v1${path}`, body, opts);

export const register = (username, password) =>
  rest('POST', '/auth/register', { username, password, client: 'web' }, { noAuth: true });
export const login = (login, password) =>
  rest('POST', '/auth/login', { login, password, client: 'web' }, { noAuth: true });
export const guest = (nick, hashcash) =>
  lp('POST', '/session', hashcash ? { nick, client: 'web', hashcash } : { nick, client: 'web' }, { noAuth: true });
/** The server's name, limits and the proof of work a guest needs (`hashcash: {bits, resource}`). */
export const serverInfo = () => lp('GET', '/server', undefined, { noAuth: true });

// The password rule the server applies on every door, shown before submit. Counted in characters (code
// points), as the server counts them.
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 128;
export function passwordProblem(password) {
  const n = [...password].length;
  if (n < PASSWORD_MIN) return `Password must be at least ${PASSWORD_MIN} characters (${n} so far).`;
  if (n > PASSWORD_MAX) return `Password must be at most ${PASSWORD_MAX} characters.`;
  return '';
}

/**
 * Mints a hashcash stamp for guest sign-up in a Web Worker: `1:bits:YYMMDD:resource::rand:counter` whose
 * SHA-256 starts with `bits` zero bits. `onProgress(fraction)` is called as it works (an estimate: the work
 * is random, about 2^bits hashes). Resolves to the stamp.
 */
export function mintStamp(bits, resource, onProgress = () => {}) {
  const date = new Date().toISOString();
  const day = date.slice(2, 4) + date.slice(5, 7) + date.slice(8, 10);
  const raw = crypto.getRandomValues(new Uint8Array(12));
  const rand = btoa(String.fromCharCode(...raw));
  const expected = 2 ** bits;
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./hashcash-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = (e) => {
      if (e.data.progress !== undefined) {
        onProgress(Math.min(0.99, e.data.progress / expected));
        return;
      }
      worker.terminate();
      if (e.data.stamp) { onProgress(1); resolve(e.data.stamp); } else reject(new Error(e.data.error || 'Proof of work failed'));
    };
    worker.onerror = (e) => { worker.terminate(); reject(new Error(e.message || 'Proof of work failed')); };
    worker.postMessage({ bits, resource, date: day, rand });
  });
}
export const logout = () => rest('POST', '/auth/logout');

export const enc = encodeURIComponent;
