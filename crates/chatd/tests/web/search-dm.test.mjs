// Search inside a direct message finds what was said there, as /api/v1/search does, and a result opens the
// conversation at the message.

import { apiClient, register, openAs, msgByText } from './support.mjs';

export default async function (t) {
  const { assert, baseUrl, waitFor } = t;
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const alice = await register(api, `da${tag}`);
  const bob = await register(api, `db${tag}`);
  const me = await api('GET', '/api/v10/users/@me', alice.token);
  const dm = await api('POST', '/api/v10/users/@me/channels', bob.token, { recipient_id: me.id });
  await api('POST', `/api/v10/channels/${dm.id}/messages`, bob.token, { content: `the secret word is pelican${tag}` });
  await api('POST', `/api/v10/channels/${dm.id}/messages`, alice.token, { content: 'noted' });
  // The long-poll API finds it; so must the page.
  const direct = await api('GET', `/api/v1/search?q=pelican${tag}`, alice.token);
  assert.equal(direct.messages.length, 1, '/api/v1/search finds the DM message');

  const page = await openAs(t, alice.token);
  await page.getByTestId('space-dms').click();
  await page.locator(`[data-testid="channel-item"][data-channel-id="${dm.id}"]`).click();
  // The conversation is open and its history shown before searching: under load, the first READY's
  // selection or the history's arrival could otherwise land between the click and the search.
  await page.locator(`[data-testid="channel-item"][data-channel-id="${dm.id}"][aria-current="page"]`)
    .waitFor({ timeout: 10_000 });
  await msgByText(page, 'noted').waitFor({ timeout: 10_000 });
  await page.getByTestId('search-input').fill(`pelican${tag}`);
  await page.getByTestId('search-input').press('Enter');
  const hit = page.locator('[data-testid="search-result"]', { hasText: `pelican${tag}` }).first();
  await hit.waitFor({ timeout: 10_000 });
  assert.match(await hit.textContent(), new RegExp(`db${tag}`), 'the result names its author');

  // From the list of conversations, with none open, the search covers every DM too.
  await page.getByTestId('search-input').fill('');
  await page.keyboard.press('Escape');
  const dmItem = page.locator(`[data-testid="channel-item"][data-channel-id="${dm.id}"]`);
  await page.getByTestId('space-item').first().click();
  // The space is shown (its channels, not the DMs) before going back to the conversations, and the
  // conversations are listed again before searching: a search runs where the page is when it is sent.
  await dmItem.waitFor({ state: 'detached', timeout: 10_000 });
  await page.getByTestId('space-dms').click();
  await dmItem.waitFor({ timeout: 10_000 });
  await page.getByTestId('search-input').fill(`pelican${tag}`);
  await page.getByTestId('search-input').press('Enter');
  await page.locator('[data-testid="search-result"]', { hasText: `pelican${tag}` }).first().waitFor({ timeout: 10_000 });
  await page.locator('[data-testid="search-result"]', { hasText: `pelican${tag}` }).first().click();
  await waitFor(() => page.evaluate(() => !!document.querySelector('[data-testid="message"].flash')),
    { timeout: 5000, message: 'clicking the result opens the DM at the message' });
}
