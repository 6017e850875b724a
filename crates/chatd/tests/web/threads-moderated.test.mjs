// A thread under +m: the channel's operator starts one and speaks in it; a plain member is refused, and the
// refusal stays where the thread's name was typed (the popover keeps the name and shows the error) instead of
// the page moving on as if the thread existed, so nothing meant for the thread is posted in the channel.

import { apiClient, register, openAs, openChannel, msgByText } from './support.mjs';

export default async function (t) {
  const { assert, baseUrl, waitFor } = t;
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const chan = `mod${tag}`;
  const alice = await register(api, `ma${tag}`);
  const bob = await register(api, `mb${tag}`);
  const cmd = (who, body) => api('POST', '/api/v1/messages', who.token, body);
  await cmd(alice, { command: 'JOIN', to: `#${chan}` });
  await cmd(bob, { command: 'JOIN', to: `#${chan}` });
  await cmd(alice, { command: 'PRIVMSG', to: `#${chan}`, body: `opening words ${tag}` });
  await cmd(alice, { command: 'MODE', to: `#${chan}`, body: '+m' });

  const history = async () => (await api('GET', `/api/v1/history?target=%23${chan}&limit=50`, alice.token)).messages;

  // bob, a plain member, may not start a thread: the popover stays with his text and says why.
  const bp = await openAs(t, bob.token);
  await openChannel(bp, chan);
  const root = msgByText(bp, `opening words ${tag}`).last();
  await root.waitFor({ timeout: 10_000 });
  await root.hover();
  await root.getByTestId('action-thread').click();
  await bp.getByTestId('ask-input').fill(`Side talk ${tag}`);
  await bp.getByTestId('ask-submit').click();
  await bp.getByTestId('ask-error').waitFor({ state: 'visible', timeout: 10_000 });
  assert.match(await bp.getByTestId('ask-error').textContent(), /CREATE_PUBLIC_THREADS/, 'the error names the permission');
  assert.equal(await bp.getByTestId('ask-input').inputValue(), `Side talk ${tag}`, 'the typed name is kept');
  assert.equal(await bp.getByTestId('thread-popover').count(), 1, 'the popover stays open');
  assert.equal(await bp.getByTestId('channel-title').textContent(), chan, 'bob is still in the channel');
  const before = await history();
  assert.ok(!before.some((m) => (m.from === `mb${tag}` && m.type !== 'join') || (m.body || '').includes('Side talk')),
    'nothing of bob reached the channel');
  await bp.keyboard.press('Escape');

  // alice, the operator, starts one and posts in it.
  const ap = await openAs(t, alice.token);
  await openChannel(ap, chan);
  const aroot = msgByText(ap, `opening words ${tag}`).last();
  await aroot.waitFor({ timeout: 10_000 });
  await aroot.hover();
  await aroot.getByTestId('action-thread').click();
  await ap.getByTestId('ask-input').fill(`Ops talk ${tag}`);
  await ap.getByTestId('ask-submit').click();
  await waitFor(async () => (await ap.getByTestId('channel-title').textContent()) === `Ops talk ${tag}`,
    { timeout: 10_000, message: 'the operator\'s thread opens' });
  const box = ap.getByTestId('composer-input');
  await box.fill(`in the thread ${tag}`);
  await box.press('Enter');
  await waitFor(async () => (await msgByText(ap, `in the thread ${tag}`).last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'the operator\'s message in the thread is sent, not refused' });
  assert.ok(!(await history()).some((m) => (m.body || '').includes(`in the thread ${tag}`)),
    'the thread\'s message is not in the channel');
}
