// A server restart under an open page: chatd stops gracefully (op 7, then a resumable close) and comes back
// on the same address; the page resumes its gateway session without reloading, and every message sent
// around the restart shows exactly once, in order. Needs t.restartServer (run by the cargo test).

export default async function (t) {
  const { assert, baseUrl, waitFor, log } = t;
  const tag = Math.random().toString(36).slice(2, 7);
  const api = async (method, path, token, body) => {
    const res = await fetch(`${baseUrl}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  const register = (name) =>
    api('POST', '/api/v10/auth/register', null, { username: name, password: 'correct horse battery', client: 'test' });
  const say = (token, body) => api('POST', '/api/v1/messages', token, { command: 'PRIVMSG', to: '#restart', body });

  const alice = await register(`ra${tag}`);
  const bob = await register(`rb${tag}`);
  for (const who of [alice, bob]) {
    await api('POST', '/api/v1/messages', who.token, { command: 'JOIN', to: '#restart' });
  }

  const page = await t.newPage();
  await page.goto(`${baseUrl}/`);
  await page.evaluate((token) => localStorage.setItem('chatd.token', token), alice.token);
  await page.reload();
  const channel = page.locator('[data-testid="channel-item"][data-channel-name="restart"]');
  await channel.waitFor({ timeout: 15_000 });
  await channel.click();
  const shown = (text) => page.locator('[data-testid="message-content"]', { hasText: text });
  await say(bob.token, `before restart ${tag}`);
  await shown(`before restart ${tag}`).waitFor({ timeout: 10_000 });
  // A mark on the window: if the page reloaded, it would be gone.
  await page.evaluate(() => { window.__sameDocument = true; });

  log('restarting chatd');
  await t.restartServer();
  // Sent at once, while the page is still reconnecting: the Resume must replay them.
  const after = [1, 2, 3].map((i) => `after restart ${i} ${tag}`);
  for (const body of after) {
    await waitFor(() => say(bob.token, body).then(() => true), { timeout: 15_000, message: `bob sends "${body}"` });
  }
  for (const body of after) {
    await shown(body).waitFor({ timeout: 20_000 });
  }
  const texts = await page.locator('[data-testid="message-content"]').allTextContents();
  const ours = texts.filter((x) => x.includes(tag));
  assert.deepEqual(ours, [`before restart ${tag}`, ...after], 'each message once, in order, after the restart');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page continued without a reload');

  // And the page still sends.
  const box = page.getByTestId('composer-input');
  await box.fill(`back again ${tag}`);
  await box.press('Enter');
  await waitFor(async () => (await api('GET', `/api/v1/history?target=%23restart&limit=10`, bob.token))
    .messages.some((m) => m.body === `back again ${tag}`), { timeout: 10_000, message: 'bob reads what alice sent after the restart' });
}
