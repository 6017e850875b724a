// A channel shared with a linked server, in the web client: a remote user's messages arrive with the mark of
// their server (beside the name in the message list and the member list), and what the local user types
// reaches the remote user on their own server, as `nick@server`.

import { apiClient, register, openAs, openChannel, msgByText } from './support.mjs';

export default async function (t) {
  const { assert, baseUrl, peerUrl, waitFor } = t;
  assert.ok(peerUrl, 'CHATD_PEER_URL must name a chatd linked to CHATD_URL (crates/chatd/tests/it/web.rs sets it)');
  const api = apiClient(baseUrl);
  const peer = apiClient(peerUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const channel = `fed${tag}`;
  const here = await api('GET', '/api/v1/federation/status');
  const there = await peer('GET', '/api/v1/federation/status');

  const alice = await register(api, `fa${tag}`);
  await api('POST', '/api/v1/messages', alice.token, { command: 'JOIN', to: `#${channel}` });
  const bob = await peer('POST', '/api/v1/session', null, { nick: `fb${tag}` });
  const aliceThere = `fa${tag}@${here.name}`;
  const bobHere = `fb${tag}@${there.name}`;
  await waitFor(async () => {
    const m = await peer('GET', `/api/v1/channels/%23${channel}/members`, bob.token);
    return JSON.stringify(m).includes(aliceThere);
  }, { timeout: 15_000, message: `alice's join reaches ${there.name}` });
  await peer('POST', '/api/v1/messages', bob.token, { command: 'JOIN', to: `#${channel}` });
  await peer('POST', '/api/v1/messages', bob.token, { command: 'PRIVMSG', to: `#${channel}`, body: `hello from ${there.name} ${tag}` });

  const page = await openAs(t, alice.token);
  await openChannel(page, channel);
  const msg = msgByText(page, `hello from ${there.name} ${tag}`);
  await msg.waitFor({ timeout: 15_000 });
  const mark = msg.getByTestId('remote-tag');
  await mark.waitFor({ timeout: 5_000 });
  assert.match(await mark.textContent(), new RegExp(there.name.replace(/\./g, '\\.')), 'the message is marked with its server');
  assert.equal(await msg.locator('.msg-author').textContent(), bobHere);
  const member = page.locator(`[data-testid="member-item"][data-name="${bobHere}"]`);
  await member.waitFor({ timeout: 10_000 });
  assert.equal(await member.getByTestId('remote-tag').count(), 1, 'bob is marked in the member list');
  const me = page.locator(`[data-testid="member-item"][data-name="fa${tag}"]`);
  await me.waitFor({ timeout: 10_000 });
  assert.equal(await me.getByTestId('remote-tag').count(), 0, 'a local user carries no mark');

  // alice answers from the composer; bob reads it on his own server, once.
  const box = page.getByTestId('composer-input');
  await box.fill(`hi ${bobHere}, from the web ${tag}`);
  await box.press('Enter');
  let cursor = 0;
  const seen = [];
  await waitFor(async () => {
    const r = await peer('GET', `/api/v1/messages?after=${cursor}&timeout=1`, bob.token);
    cursor = r.cursor;
    seen.push(...r.messages.filter((m) => m.type === 'message' && m.from === aliceThere));
    return seen.length > 0;
  }, { timeout: 15_000, message: `alice's message reaches ${there.name}` });
  assert.equal(seen.length, 1);
  assert.equal(seen[0].body, `hi ${bobHere}, from the web ${tag}`);
}
