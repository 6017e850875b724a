// A chosen status survives a server restart: the status is the page's choice, sent with every Identify and
// again after every Resume (the server keeps presence live-only, as Discord does per session), so that a
// restart, which the page rides out with a Resume, does not turn Do Not Disturb back into online. Idle is
// a status, not an away message: choosing it leaves no "afk" behind. Needs t.restartServer.

import { apiClient, register, openAs } from './support.mjs';

export default async function (t) {
  const { assert, baseUrl, waitFor, log } = t;
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const name = `st${tag}`;
  const alice = await register(api, name);
  const bob = await register(api, `sb${tag}`);
  const whois = () => api('GET', `/api/v1/users/${name}`, bob.token);
  const choose = async (page, status) => {
    await page.getByTestId('status-button').click();
    await page.locator(`[data-testid="status-menu"] [data-status="${status}"]`).click();
  };

  const page = await openAs(t, alice.token);
  // Idle first: it must not leave an away message behind when another status is chosen.
  await choose(page, 'idle');
  await waitFor(async () => (await whois()).status === 'idle', { timeout: 10_000, message: 'alice shows idle' });
  assert.equal((await whois()).away, null, 'idle is a status, not an away message');
  await choose(page, 'dnd');
  await waitFor(async () => (await whois()).status === 'dnd', { timeout: 10_000, message: 'alice shows dnd' });

  log('restarting chatd');
  await t.restartServer();
  await waitFor(async () => (await whois().catch(() => ({}))).status === 'dnd',
    // Generous: the page reconnects with backoff, and the test binary runs other suites beside this one.
    { timeout: 40_000, message: 'alice is still Do Not Disturb after the restart' });
  const after = await whois();
  assert.equal(after.away, null, 'and not away');
  // The page itself shows the status it chose.
  await waitFor(() => page.evaluate(() => /Do Not Disturb|dnd/i.test(document.querySelector('[data-testid="status-button"]')?.getAttribute('aria-label') || '')),
    { timeout: 10_000, message: 'the page shows dnd' });

  // Another device of alice's, which chose nothing, connects without undoing the choice.
  const other = await openAs(t, alice.token);
  await waitFor(() => other.evaluate(() => document.querySelector('[data-testid="me-name"]')?.textContent),
    { timeout: 10_000, message: 'the second device is signed in' });
  await waitFor(async () => (await other.locator('[data-testid="conn-status"]').isHidden()), { timeout: 10_000, message: 'the second device is connected' });
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal((await whois()).status, 'dnd', 'a second device does not clear the chosen status');
}
