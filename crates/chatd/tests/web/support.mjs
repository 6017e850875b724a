// Helpers shared by the browser scenarios that set up their users over the HTTP APIs (not a test file:
// run.mjs imports only `*.test.mjs`).

export const PASSWORD = 'correct horse battery';

/** A client of both APIs for one base URL: api(method, path, token, body) -> parsed JSON, or throws. */
export function apiClient(baseUrl) {
  return async (method, path, token, body) => {
    const res = await fetch(`${baseUrl}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
}

/** Registers an account: {token, user, ...}. */
export const register = (api, name) =>
  api('POST', '/api/v10/auth/register', null, { username: name, password: PASSWORD, client: 'test' });

/** Opens the web client signed in with `token`, and waits for the shell. */
export async function openAs(t, token, url = '/') {
  const page = await t.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${t.baseUrl}/`);
  await page.evaluate((tok) => localStorage.setItem('chatd.token', tok), token);
  await page.goto(`${t.baseUrl}${url}`);
  await page.getByTestId('app').waitFor({ timeout: 15_000 });
  return page;
}

/** Opens the network channel `name` (without '#') from the sidebar. */
export async function openChannel(page, name) {
  const item = page.locator(`[data-testid="channel-item"][data-channel-name="${name}"]`);
  await item.waitFor({ timeout: 15_000 });
  await item.click();
  await page.locator(`[data-testid="channel-item"][data-channel-name="${name}"][aria-current="page"]`)
    .waitFor({ timeout: 10_000 });
}

/** The message whose own text contains `text`. */
export const msgByText = (page, text) => page.locator('[data-testid="message"]', {
  has: page.locator('[data-testid="message-content"]', { hasText: text }),
});
