// The composer knows the server's MAX_MESSAGE_SIZE (from GET /api/v1/server, in bytes of UTF-8): near it, it
// shows what is left; over it, Enter sends nothing, no failed bubble appears, and the text stays to be
// shortened. A message at the limit exactly goes out. Should a refusal come anyway (the page could not learn
// the limit), the failed bubble hands the text back instead of offering a Retry that cannot succeed.

import { apiClient, register, openAs, openChannel, msgByText } from './support.mjs';

export default async function (t) {
  const { assert, baseUrl, waitFor } = t;
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const chan = `long${tag}`;
  const alice = await register(api, `la${tag}`);
  await api('POST', '/api/v1/messages', alice.token, { command: 'JOIN', to: `#${chan}` });
  const max = (await api('GET', '/api/v1/server')).max_message_size;
  assert.ok(Number.isInteger(max) && max > 10, `the server tells its limit (${max})`);

  const page = await openAs(t, alice.token);
  await openChannel(page, chan);
  const box = page.getByTestId('composer-input');
  const counter = page.getByTestId('composer-count');
  const typeText = async (text) => { await box.fill(text); };

  await typeText(`short ${tag}`);
  assert.equal(await counter.isVisible(), false, 'no counter far from the limit');

  // Near the limit the room left shows.
  await typeText(`${tag}`.padEnd(max - 5, 'x'));
  await waitFor(async () => (await counter.isVisible()) && (await counter.textContent()) === '5',
    { timeout: 5000, message: 'the counter shows 5 bytes left' });

  // Over it in bytes though not in characters: é is two bytes.
  const over = `${tag} ${'é'.repeat(Math.ceil(max / 2))}`;
  assert.ok(over.length < max, 'fewer characters than the limit');
  await typeText(over);
  await waitFor(async () => (await counter.getAttribute('class')).includes('over'), { timeout: 5000, message: 'the counter turns red' });
  assert.ok(Number(await counter.textContent()) < 0, 'it counts below zero');
  await box.press('Enter');
  await page.locator('[data-testid="system-line"]').first().waitFor({ timeout: 5000 });
  assert.match(await page.locator('[data-testid="system-line"]').first().textContent(), /over the server's limit/);
  assert.equal(await box.inputValue(), over, 'the text stays in the composer');
  assert.equal(await page.locator('[data-testid="message"][data-state="failed"]').count(), 0, 'no failed bubble');
  assert.equal(await page.locator('[data-testid="message"][data-state="sending"]').count(), 0, 'nothing went out');
  const history = await api('GET', `/api/v1/history?target=%23${chan}&limit=20`, alice.token);
  assert.ok(!history.messages.some((m) => m.type === 'message'), 'the server received nothing');

  // Exactly at the limit, it goes.
  const exact = `${tag}`.padEnd(max, 'y');
  await typeText(exact);
  await box.press('Enter');
  await waitFor(async () => (await msgByText(page, tag).last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'a message of exactly the limit is sent' });
  assert.equal(await box.inputValue(), '', 'the composer is empty again');

  await page.evaluate(async () => { (await import('/static/state.js')).S.maxMessageBytes = null; });
  await typeText(over);
  await box.press('Enter');
  const failed = page.locator('[data-testid="message"][data-state="failed"]');
  await failed.first().waitFor({ timeout: 10_000 });
  assert.equal(await failed.getByTestId('retry').count(), 0, 'no Retry for a message the server refused for good');
  await failed.getByTestId('edit-failed').click();
  assert.equal(await box.inputValue(), over, 'Edit puts the text back in the composer');
  assert.equal(await failed.count(), 0, 'and the bubble goes');
}
