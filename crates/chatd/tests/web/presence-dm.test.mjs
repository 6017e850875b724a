// The presence dot beside a conversation in the direct-message list follows the other user live: it changes
// when they come online, choose Do Not Disturb, and leave, without the page navigating anywhere.

import { apiClient, register, openAs } from './support.mjs';

export default async function (t) {
  const { baseUrl, waitFor } = t;
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const alice = await register(api, `pa${tag}`);
  const bob = await register(api, `pb${tag}`);
  const me = await api('GET', '/api/v10/users/@me', alice.token);
  const dm = await api('POST', '/api/v10/users/@me/channels', bob.token, { recipient_id: me.id });
  await api('POST', `/api/v10/channels/${dm.id}/messages`, bob.token, { content: `hello ${tag}` });

  const bp = await openAs(t, bob.token);
  await bp.getByTestId('space-dms').click();
  const dot = bp.locator(`[data-testid="channel-item"][data-channel-id="${dm.id}"] .presence`);
  await dot.waitFor({ timeout: 10_000 });
  const dotIs = (status, message) => waitFor(async () => (await dot.getAttribute('title')) === status,
    { timeout: 15_000, message });
  await dotIs('offline', 'alice starts offline');

  // alice opens the web client: bob's list shows her online, then Do Not Disturb, then offline again.
  const ap = await openAs(t, alice.token);
  await dotIs('online', 'alice comes online');
  await ap.getByTestId('status-button').click();
  await ap.locator('[data-testid="status-menu"] [data-status="dnd"]').click();
  await dotIs('dnd', 'alice chooses Do Not Disturb');
  await ap.close();
  await dotIs('offline', 'alice leaves');
}
