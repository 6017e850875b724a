// End-to-end scenarios of the web client with two people (alice and bob, two browser contexts) against a real
// chatd: sign up, /join, chat both ways with delivery states (sending -> sent, failed -> Retry), typing and
// presence, reply, edit (Up arrow), reactions, an image upload and a dropped file, /me and /topic, command
// errors and autocomplete, pins, search, a thread, unread and mention markers, a desktop notification, the
// "new messages" bar, keyboard navigation, screenshots of the main screens, XSS attempts (messages, topic,
// display name) rendered as text, a DM, a reload that keeps history, and the long-poll fallback when
// WebSockets are cut.

import { deflateSync } from 'node:zlib';

const PASSWORD = 'correct horse battery';
const XSS_IMG = '<img src=x onerror=window.__xss=1>';
const XSS_SCRIPT = '<script>window.__xss=1</script>';

// ---------- a PNG made here (no fixture files): a soft gradient with a "sun" ----------
function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
function makePng(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;
    for (let x = 0; x < w; x++) {
      const i = y * (w * 3 + 1) + 1 + x * 3;
      const sky = y / h;
      let r = 88 + 150 * sky; let g = 101 + 60 * sky; let b = 242 - 90 * sky;
      const dx = x - w * 0.7; const dy = y - h * 0.45;
      if (dx * dx + dy * dy < (h * 0.16) ** 2) { r = 255; g = 214; b = 102; }
      if (y > h * 0.72 - 18 * Math.sin(x / 23)) { r = 35; g = 120 + 40 * (x / w); b = 90; }
      raw[i] = Math.min(255, r); raw[i + 1] = Math.min(255, g); raw[i + 2] = Math.min(255, b);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

export default async function (t) {
  const { assert, baseUrl, waitFor, log } = t;
  const started = Date.now();
  const step = (name) => log(`${((Date.now() - started) / 1000).toFixed(1)}s ${name}`);

  // Locator helpers. Every wait has a timeout and says what it waited for.
  const visible = (page, sel, message, timeout = 10_000) =>
    page.locator(sel).first().waitFor({ state: 'visible', timeout }).catch((e) => {
      throw new Error(`${message}: ${e.message.split('\n')[0]}`);
    });
  // A message whose own text (not a quoted reply) contains `text`.
  const msgByText = (page, text) => page.locator('[data-testid="message"]', {
    has: page.locator('[data-testid="message-content"]', { hasText: text }),
  });
  const waitText = (page, text, message, timeout = 10_000) =>
    msgByText(page, text).last().waitFor({ state: 'visible', timeout }).catch((e) => {
      throw new Error(`${message}: ${e.message.split('\n')[0]}`);
    });
  const send = async (page, text) => {
    const box = page.getByTestId('composer-input');
    await box.fill(text);
    await box.press('Enter');
  };

  // Sign up through the form; "alice" may be taken when the suite runs twice on one server.
  async function signUp(page, wanted) {
    await page.goto(`${baseUrl}/`);
    await visible(page, '[data-testid="auth-form"]', 'the sign-in form shows');
    for (const name of [wanted, `${wanted}${Math.random().toString(36).slice(2, 6)}`]) {
      await page.getByTestId('auth-tab-register').click();
      await page.getByTestId('auth-username').fill(name);
      await page.getByTestId('auth-password').fill(PASSWORD);
      await page.getByTestId('auth-submit').click();
      const outcome = await Promise.race([
        page.getByTestId('app').waitFor({ timeout: 10_000 }).then(() => 'app'),
        page.locator('[data-testid="auth-error"]:not(:empty)').waitFor({ timeout: 10_000 }).then(() => 'error'),
      ]);
      if (outcome === 'app') {
        await waitFor(() => page.evaluate(() => document.querySelector('[data-testid="me-name"]')?.textContent),
          { timeout: 10_000, message: `${name}: the app shell shows who is signed in` });
        return name;
      }
      log(`sign up as ${name} refused: ${await page.getByTestId('auth-error').textContent()}`);
    }
    throw new Error(`could not sign up as ${wanted}`);
  }

  async function joinGeneral(page, who) {
    await send(page, `/join #${GEN}`);
    await waitFor(() => page.evaluate((n) =>
      document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"][aria-current="page"]`), GEN),
    { timeout: 10_000, message: `${who}: /join #${GEN} opens it` });
  }

  // ---------- login screen ----------
  step('login screen');
  const alice = await t.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
  await alice.goto(`${baseUrl}/`);
  await visible(alice, '[data-testid="auth-form"]', 'the sign-in form shows');
  assert.equal(await alice.evaluate(() => document.documentElement.dataset.theme), 'dark', 'dark theme by default in a dark browser');
  await t.screenshot(alice, 'login');

  // ---------- both sign up and join #general ----------
  step('sign up');
  const bob = await t.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
  const aliceName = await signUp(alice, 'alice');
  log(`signed up as ${aliceName}`);
  const bobName = await signUp(bob, 'bob');
  log(`signed up as ${bobName}`);
  // On a fresh server the conversation happens in #general; when the suite runs again on the same server
  // (names taken), in a channel of its own, so that old messages cannot satisfy a wait.
  const GEN = aliceName === 'alice' ? 'general' : `general-${aliceName.slice(5)}`;
  step('join #general');
  // alice is also in two quieter channels, so the sidebar looks lived-in.
  for (const c of ['random', 'releases']) {
    await send(alice, `/join #${c}`);
    await waitFor(() => alice.evaluate((n) =>
      document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"][aria-current="page"]`), c),
    { timeout: 10_000, message: `alice: /join #${c} opens it` });
  }
  await joinGeneral(alice, 'alice');
  await joinGeneral(bob, 'bob');

  // ---------- delivery states: sending -> sent (the POST is held back briefly to observe "sending") ----------
  step('send with delivery states');
  let release;
  const held = new Promise((r) => { release = r; });
  await alice.route('**/api/v10/channels/*/messages', async (route) => {
    if (route.request().method() === 'POST') await held;
    await route.continue();
  });
  const first = 'Hey bob! Welcome to **chatd** 👋 the new home for our team chat.';
  await send(alice, first);
  const pending = msgByText(alice, 'Welcome to chatd').last();
  await pending.waitFor({ timeout: 5000 });
  assert.equal(await pending.getAttribute('data-state'), 'sending', 'a new message shows at once as sending');
  release();
  await waitFor(async () => (await msgByText(alice, 'Welcome to chatd').last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'the message becomes sent' });
  await alice.unroute('**/api/v10/channels/*/messages');
  assert.match(await msgByText(alice, 'Welcome to chatd').last().getAttribute('data-message-id'), /^\d+$/,
    'the sent message has its server id');
  // Markdown went through markdown.js: bold is an element, not asterisks.
  assert.equal(await msgByText(alice, 'Welcome to chatd').last().locator('strong').textContent(), 'chatd');

  // A send that fails shows "failed" with Retry; Retry delivers it.
  step('failed send and retry');
  await alice.route('**/api/v10/channels/*/messages', (route) =>
    (route.request().method() === 'POST' ? route.abort('connectionrefused') : route.continue()));
  await send(alice, 'Is this thing on?');
  await waitFor(async () => (await msgByText(alice, 'Is this thing on?').last().getAttribute('data-state')) === 'failed',
    { timeout: 10_000, message: 'a send that cannot reach the server is marked failed' });
  await alice.unroute('**/api/v10/channels/*/messages');
  await msgByText(alice, 'Is this thing on?').last().getByTestId('retry').click();
  await waitFor(async () => (await msgByText(alice, 'Is this thing on?').last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'Retry sends it' });
  // Retry reuses the nonce: one copy only, on both sides.
  await waitText(bob, 'Is this thing on?', 'bob receives the retried message');
  assert.equal(await msgByText(bob, 'Is this thing on?').count(), 1, 'no duplicate after a retry');
  await msgByText(alice, 'Is this thing on?').last().hover();
  await msgByText(alice, 'Is this thing on?').last().getByTestId('action-delete').click();
  await alice.getByTestId('ask-submit').click();
  await msgByText(bob, 'Is this thing on?').waitFor({ state: 'detached', timeout: 10_000 });

  // bob sees it live, and answers.
  await waitText(bob, 'Welcome to chatd', 'bob receives alice\'s message');
  step('typing indicator');
  await bob.getByTestId('composer-input').pressSequentially('Thanks', { delay: 20 });
  await waitFor(async () => /is typing/.test(await alice.getByTestId('typing-indicator').textContent()),
    { timeout: 10_000, message: 'alice sees that bob is typing' });
  assert.match(await alice.getByTestId('typing-indicator').textContent(), new RegExp(bobName));
  await bob.getByTestId('composer-input').press('End');
  await bob.getByTestId('composer-input').pressSequentially(' alice! Glad to be here. Is the deploy still on for today?');
  await bob.getByTestId('composer-input').press('Enter');
  await waitText(alice, 'Glad to be here', 'alice receives bob\'s answer');

  step('presence');
  await waitFor(() => alice.evaluate((n) =>
    document.querySelector(`[data-testid="member-item"][data-name="${n}"]`)?.dataset.presence === 'online', bobName),
  { timeout: 10_000, message: 'alice sees bob online in the member list' });

  // ---------- a few more lines, a reply, an edit ----------
  step('reply and edit');
  await send(alice, 'Yes, at 5pm. I will post the checklist in #general before then.');
  await waitText(bob, 'at 5pm', 'bob receives the plan');
  const target = msgByText(bob, 'at 5pm').last();
  await target.hover();
  await target.getByTestId('action-reply').click();
  await visible(bob, '[data-testid="reply-bar"]', 'the reply bar shows');
  await send(bob, 'Perfect, I will run the migration dry-run first');
  const replyOnAlice = msgByText(alice, 'migration dry-run').last();
  await replyOnAlice.waitFor({ timeout: 10_000 });
  assert.match(await replyOnAlice.getByTestId('reply-preview').textContent(), /at 5pm/, 'the reply quotes the message');

  await send(alice, 'Thanks! Ping me if anything looks od');
  await waitText(alice, 'looks od', 'alice sees her own message');
  await waitFor(async () => (await msgByText(alice, 'looks od').last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'the message is sent before editing' });
  await alice.getByTestId('composer-input').press('ArrowUp');
  const edit = alice.getByTestId('edit-input');
  await edit.waitFor({ timeout: 5000 });
  await edit.fill('Thanks! Ping me if anything looks odd');
  // A message arriving meanwhile does not steal the edit box's focus.
  await send(bob, 'Will do 🙂');
  await waitText(alice, 'Will do', 'alice receives a message while editing');
  assert.equal(await alice.evaluate(() => document.activeElement?.dataset.testid), 'edit-input', 'the edit box keeps focus');
  await edit.press('Enter');
  const edited = msgByText(bob, 'looks odd').last();
  await edited.waitFor({ timeout: 10_000 });
  await edited.getByTestId('edited').waitFor({ timeout: 10_000 });

  // ---------- reactions ----------
  step('reactions');
  const bobsMsg = msgByText(alice, 'Glad to be here').last();
  await bobsMsg.hover();
  await bobsMsg.getByTestId('action-react').click();
  await alice.getByTestId('emoji-picker').locator('[data-emoji="👍"]').click();
  const bobSees = msgByText(bob, 'Glad to be here').last().locator('[data-testid="reaction"][data-emoji="👍"]');
  await bobSees.waitFor({ timeout: 10_000 });
  assert.equal(await bobSees.getAttribute('data-count'), '1');
  await bobSees.click();
  await waitFor(async () => (await msgByText(alice, 'Glad to be here').last().locator('[data-testid="reaction"][data-emoji="👍"]').getAttribute('data-count')) === '2',
    { timeout: 10_000, message: 'alice sees two 👍' });
  assert.equal(await bobSees.getAttribute('aria-pressed'), 'true', 'bob\'s own reaction is highlighted');
  // And bob can take his back, then add it again (clicking your own removes it).
  await bobSees.click();
  await waitFor(async () => (await msgByText(alice, 'Glad to be here').last().locator('[data-testid="reaction"][data-emoji="👍"]').getAttribute('data-count')) === '1',
    { timeout: 10_000, message: 'removing a reaction lowers the count' });
  await bobSees.click();
  await waitFor(async () => (await msgByText(alice, 'Glad to be here').last().locator('[data-testid="reaction"][data-emoji="👍"]').getAttribute('data-count')) === '2',
    { timeout: 10_000, message: 'adding it back' });
  const bobsAnswer = msgByText(bob, 'at 5pm').last();
  await bobsAnswer.hover();
  await bobsAnswer.getByTestId('action-react').click();
  await bob.getByTestId('emoji-picker').locator('[data-emoji="🚀"]').click();
  await msgByText(alice, 'at 5pm').last().locator('[data-testid="reaction"][data-emoji="🚀"]').waitFor({ timeout: 10_000 });

  // ---------- an image upload ----------
  step('image upload');
  await alice.getByTestId('composer-input').fill('The view from the offsite 🌄');
  await alice.getByTestId('file-input').setInputFiles({ name: 'offsite.png', mimeType: 'image/png', buffer: makePng(360, 200) });
  const img = bob.locator('[data-testid="attachment-image"]').last();
  await img.waitFor({ timeout: 15_000 });
  // Attachment URLs are absolute, under the host the page was served from.
  assert.ok((await img.getAttribute('src')).startsWith(`${baseUrl}/attachments/`), 'the image comes from the server');
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth === 360),
    { timeout: 10_000, message: 'bob\'s browser loads the uploaded image' });

  // ---------- IRC side: /me and /topic ----------
  step('/me and /topic');
  await send(bob, '/me grabs a coffee before the deploy ☕');
  const action = alice.locator('[data-testid="message"][data-kind="action"]', { hasText: `* ${bobName} grabs a coffee` }).last();
  await action.waitFor({ timeout: 10_000 });
  assert.match(await action.textContent(), new RegExp(`\\* ${bobName} grabs a coffee`), 'an action reads "* bob grabs…"');
  // A command error shows inline, briefly.
  await send(alice, '/frobnicate');
  await visible(alice, '[data-testid="system-line"]', 'an unknown command says so inline');
  // Autocomplete: "/to" offers /topic; Tab completes.
  await alice.getByTestId('composer-input').fill('');
  await alice.getByTestId('composer-input').pressSequentially('/to');
  await visible(alice, '[data-testid="autocomplete-item"][data-value="topic"]', 'typing "/to" suggests /topic');
  await alice.getByTestId('composer-input').press('Tab');
  assert.equal(await alice.getByTestId('composer-input').inputValue(), '/topic ', 'Tab completes the command');
  // Nicks complete after "@" from the menu, and IRC-style with Tab on a bare prefix.
  await alice.getByTestId('composer-input').fill('');
  await alice.getByTestId('composer-input').pressSequentially(`@${bobName.slice(0, 2)}`);
  await alice.locator(`[data-testid="autocomplete-item"][data-value="${bobName}"]`).click();
  assert.equal(await alice.getByTestId('composer-input').inputValue(), `@${bobName} `, 'clicking a nick completes it');
  await alice.getByTestId('composer-input').fill('');
  await alice.getByTestId('composer-input').pressSequentially(bobName.slice(0, 2));
  await alice.getByTestId('composer-input').press('Tab');
  assert.equal(await alice.getByTestId('composer-input').inputValue(), `${bobName}: `, 'Tab completes a nick');
  await alice.getByTestId('composer-input').fill('');
  await send(alice, '/topic Release day 🚀 | deploy at 17:00 | be kind');
  await waitFor(async () => /Release day/.test(await bob.getByTestId('channel-topic').textContent()),
    { timeout: 10_000, message: 'bob sees the new topic in the header' });
  await bob.locator('[data-testid="notice"][data-kind="topic"]').first().waitFor({ timeout: 10_000 });
  assert.equal(await alice.locator('[data-testid="system-line"]').count(), 0, 'the next command clears the error line');

  // ---------- pins, search, a thread, unread markers ----------
  step('pins');
  const plan = msgByText(alice, 'at 5pm').last();
  await plan.hover();
  await plan.getByTestId('action-pin').click();
  await bob.locator('[data-testid="notice"][data-kind="pin"]').last().waitFor({ timeout: 10_000 });
  await bob.getByTestId('open-pins').click();
  await bob.locator('[data-testid="pin-item"]', { hasText: 'at 5pm' }).waitFor({ timeout: 10_000 });
  await bob.keyboard.press('Escape');
  await bob.getByTestId('pins-popover').waitFor({ state: 'detached', timeout: 3000 });

  step('search');
  await alice.getByTestId('search-input').fill('migration');
  await alice.getByTestId('search-input').press('Enter');
  const hit = alice.locator('[data-testid="search-result"]', { hasText: 'dry-run' }).first();
  await hit.waitFor({ timeout: 10_000 });
  await hit.click();
  await waitFor(() => alice.evaluate(() => !!document.querySelector('[data-testid="message"].flash')),
    { timeout: 5000, message: 'clicking a search result highlights the message' });
  await alice.getByTestId('search-input').fill('');

  step('thread');
  const root = msgByText(alice, 'at 5pm').last();
  await root.hover();
  await root.getByTestId('action-thread').click();
  await alice.getByTestId('ask-input').fill('Deploy checklist');
  await alice.getByTestId('ask-submit').click();
  await waitFor(async () => (await alice.getByTestId('channel-title').textContent()) === 'Deploy checklist',
    { timeout: 10_000, message: 'the new thread opens' });
  await send(alice, '1. back up the database\n2. run migrations\n3. smoke test');
  await waitText(alice, 'smoke test', 'a message in the thread');
  await bob.locator('[data-testid="channel-item"][data-channel-name="Deploy checklist"]').waitFor({ timeout: 10_000 });

  step('unread');
  await send(bob, 'Checklist looks good to me 👍');
  await waitFor(() => alice.evaluate((n) =>
    document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"]`)?.dataset.unread === 'true', GEN),
  { timeout: 10_000, message: 'alice sees #general unread while reading the thread' });
  await alice.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).click();
  await waitText(alice, 'Checklist looks good', 'alice opens #general');
  await visible(alice, '[data-testid="new-divider"]', 'a "new" line marks where unread messages start');
  await waitFor(() => alice.evaluate((n) =>
    document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"]`)?.dataset.unread === 'false', GEN),
  { timeout: 10_000, message: 'viewing #general clears its unread marker' });
  await send(bob, 'Here is the command for later: `cargo run --release -- migrate`');
  await waitText(alice, 'cargo run', 'alice gets the command');

  // A last exchange so that the screenshots show a reply, reactions and the image together.
  step('screenshot scene');
  const photo = msgByText(bob, 'view from the offsite').last();
  await photo.hover();
  await photo.getByTestId('action-react').click();
  await bob.getByTestId('emoji-picker').locator('[data-emoji="🔥"]').click();
  await photo.hover();
  await photo.getByTestId('action-reply').click();
  await send(bob, 'Wow, where is this? Adding it to the wallpaper rotation');
  await waitText(alice, 'wallpaper rotation', 'alice sees the reply to her photo');
  const okMsg = msgByText(alice, 'Checklist looks good').last();
  await okMsg.hover();
  await okMsg.getByTestId('action-react').click();
  await alice.getByTestId('emoji-picker').locator('[data-emoji="❤️"]').click();
  await msgByText(alice, 'view from the offsite').last().locator('[data-testid="reaction"][data-emoji="🔥"]').waitFor({ timeout: 10_000 });

  // ---------- screenshots of the main screens ----------
  step('screenshots');
  const still = async () => {
    await alice.mouse.move(640, 790);
    await alice.evaluate(() => { document.activeElement?.blur(); document.querySelectorAll('.toast').forEach((el) => el.remove()); });
  };
  await still();
  await waitFor(() => alice.evaluate(() => [...document.images].every((i) => i.complete)), { timeout: 5000, message: 'images loaded' });
  await t.screenshot(alice, 'desktop-dark');
  await alice.getByTestId('open-settings').click();
  await visible(alice, '[data-testid="settings-panel"]', 'settings open');
  await alice.getByTestId('theme-select').selectOption('light');
  assert.equal(await alice.evaluate(() => document.documentElement.dataset.theme), 'light', 'the theme select switches to light');
  await alice.getByTestId('settings-close').click();
  await still();
  await alice.waitForTimeout(300); // let colour transitions finish
  await t.screenshot(alice, 'desktop-light');
  await alice.setViewportSize({ width: 375, height: 740 });
  await alice.waitForTimeout(300);
  await t.screenshot(alice, 'narrow-light');
  assert.ok(await alice.getByTestId('hamburger').isVisible(), 'a hamburger button at 375 px');
  await alice.getByTestId('open-settings').evaluate((b) => b.click());
  await alice.getByTestId('theme-select').selectOption('dark');
  await alice.keyboard.press('Escape');
  await alice.waitForTimeout(300);
  await t.screenshot(alice, 'narrow-dark');
  // The drawer opens and closes.
  await alice.getByTestId('hamburger').click();
  await waitFor(() => alice.getByTestId('channel-list').isVisible(), { timeout: 3000, message: 'the channel drawer opens' });
  await alice.keyboard.press('Escape');
  await alice.setViewportSize({ width: 1280, height: 800 });
  assert.equal(await alice.evaluate(() => localStorage.getItem('chatd.theme')), 'dark', 'the theme choice is kept');

  // ---------- "jump to new messages" when scrolled up; a file dropped on the pane ----------
  step('jump bar and drop');
  await bob.locator('.scroller').evaluate((el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
  await waitFor(() => bob.locator('.scroller').evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight > 100),
    { timeout: 5000, message: 'bob is scrolled up' });
  const dt = await alice.evaluateHandle(() => {
    const d = new DataTransfer();
    d.items.add(new File(['- back up\n- migrate\n- smoke test\n'], 'release-notes.txt', { type: 'text/plain' }));
    return d;
  });
  await alice.dispatchEvent('.messages-pane', 'drop', { dataTransfer: dt });
  const file = bob.locator('[data-testid="attachment-file"]', { hasText: 'release-notes.txt' });
  await visible(bob, '[data-testid="jump-new"]', 'bob sees the "new messages" bar while scrolled up');
  await bob.getByTestId('jump-new').click();
  await file.first().waitFor({ timeout: 10_000 });
  const href = await file.first().getAttribute('href');
  assert.ok(href.startsWith(`${baseUrl}/attachments/`) && href.endsWith('release-notes.txt'), 'other files are links');
  await waitFor(() => bob.locator('.scroller').evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 60),
    { timeout: 5000, message: 'the bar jumps to the newest message' });

  // ---------- XSS attempts render as text ----------
  step('xss');
  await send(alice, `look ${XSS_IMG} and ${XSS_SCRIPT}`);
  // (markdown may read the "__" as bold markers; what matters is that the tags stay text)
  await waitText(bob, '<img src=x onerror=window.', 'bob receives the XSS attempt as text');
  assert.match(await msgByText(bob, '<img src=x onerror=window.').last().textContent(), /<script>window\./, 'the script tag shows as text');
  await send(alice, `/topic ${XSS_IMG}`);
  await waitFor(async () => (await bob.getByTestId('channel-topic').textContent()).includes('onerror'),
    { timeout: 10_000, message: 'the XSS topic shows as text' });
  await alice.getByTestId('open-settings').click();
  await alice.getByTestId('settings-display-name').fill(XSS_IMG.slice(0, 32));
  await alice.getByTestId('settings-save').click();
  await alice.locator('.toast', { hasText: 'Profile saved' }).waitFor({ timeout: 10_000 });
  await alice.keyboard.press('Escape');
  // Others learn a new display name from the author of the next message.
  await send(alice, 'new name, who dis?');
  await waitFor(() => bob.evaluate((s) => [...document.querySelectorAll('.msg-author')].some((e) => e.textContent === s), XSS_IMG.slice(0, 32)),
    { timeout: 10_000, message: 'bob sees alice\'s new display name, as text' });
  for (const [who, page] of [['alice', alice], ['bob', bob]]) {
    assert.equal(await page.evaluate(() => window.__xss), undefined, `${who}: no script ran`);
    assert.equal(await page.evaluate(() => document.querySelectorAll('.message-list img[src="x"], .chat-topic img, script:not([src])').length), 0,
      `${who}: no element was made from the text`);
  }
  await alice.getByTestId('open-settings').click();
  await alice.getByTestId('settings-display-name').fill('Alice');
  await alice.getByTestId('settings-save').click();
  await alice.keyboard.press('Escape');
  await send(alice, '/topic Release day 🚀 | deploy at 17:00 | be kind');

  // ---------- a direct message ----------
  step('dm');
  await alice.locator(`[data-testid="member-item"][data-name="${bobName}"]`).click();
  await alice.getByTestId('profile-message').click();
  await waitFor(async () => (await alice.getByTestId('channel-title').textContent()) === bobName,
    { timeout: 10_000, message: 'the DM with bob opens' });
  await send(alice, 'psst, can you review my PR after the deploy?');
  await waitFor(() => bob.evaluate(() => document.querySelector('[data-testid="space-dms"]')?.closest('li')?.classList.contains('unread')),
    { timeout: 10_000, message: 'bob sees an unread DM' });
  await bob.getByTestId('space-dms').click();
  await bob.locator(`[data-testid="channel-item"][data-channel-name="Alice"]`).click();
  await waitText(bob, 'review my PR', 'bob reads the DM');
  await bob.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).waitFor({ state: 'detached', timeout: 2000 }).catch(() => {});

  // ---------- mentions: highlight, badge and a desktop notification ----------
  step('mention + notification');
  await bob.context().grantPermissions(['notifications'], { origin: baseUrl });
  await bob.evaluate(() => {
    // Record notifications instead of showing them.
    window.__notes = [];
    const N = function (title, opts) { window.__notes.push({ title, body: opts && opts.body }); this.close = () => {}; };
    N.permission = 'granted';
    N.requestPermission = async () => 'granted';
    window.Notification = N;
  });
  await bob.getByTestId('open-settings').click();
  await bob.getByTestId('settings-notify').check();
  await waitFor(() => bob.evaluate(() => JSON.parse(localStorage.getItem('chatd.prefs') || '{}').notify === true),
    { timeout: 5000, message: 'the notification preference is saved' });
  await bob.keyboard.press('Escape');
  await alice.locator('[data-testid="space-item"]').first().click();
  await alice.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).click();
  await send(alice, `@${bobName} can you check the dashboard after lunch?`);
  await waitFor(() => bob.evaluate(() => window.__notes.some((n) => /dashboard/.test(n.body))),
    { timeout: 10_000, message: 'bob gets a desktop notification for the mention' });
  await bob.locator('[data-testid="space-item"]').first().click();
  await waitFor(() => bob.evaluate((n) =>
    !!document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"] [data-testid="mention-badge"]`), GEN),
  { timeout: 10_000, message: 'bob sees a mention badge on the channel' });
  await bob.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).click();
  const mention = msgByText(bob, 'dashboard').last();
  await mention.waitFor({ timeout: 10_000 });
  assert.equal(await mention.getAttribute('data-mentioned'), 'true', 'a message that mentions bob is highlighted for him');
  await waitFor(() => bob.evaluate((n) => !document.querySelector(`[data-testid="channel-item"][data-channel-name="${n}"] [data-testid="mention-badge"]`), GEN),
    { timeout: 10_000, message: 'reading #general clears the mention badge' });

  // ---------- keyboard and layout ----------
  step('keyboard');
  await alice.getByTestId('composer-input').focus();
  await alice.keyboard.press('Alt+ArrowDown');
  await waitFor(async () => (await alice.getByTestId('channel-title').textContent()) !== GEN,
    { timeout: 5000, message: 'Alt+Down moves to the next channel' });
  await alice.keyboard.press('Alt+ArrowUp');
  await waitFor(async () => (await alice.getByTestId('channel-title').textContent()) === GEN,
    { timeout: 5000, message: 'Alt+Up moves back' });
  await alice.getByTestId('toggle-members').click();
  await waitFor(async () => !(await alice.getByTestId('member-list').isVisible()), { timeout: 3000, message: 'the member list collapses' });
  await alice.getByTestId('toggle-members').click();
  await waitFor(() => alice.getByTestId('member-list').isVisible(), { timeout: 3000, message: 'the member list comes back' });

  // ---------- reload keeps history ----------
  step('reload');
  await bob.reload();
  await waitText(bob, 'dashboard', 'after a reload bob is back in #general with its history');
  await waitText(bob, 'Welcome to chatd', 'older messages are still there');
  await waitText(bob, 'looks odd', 'edits survive a reload');
  await bob.getByTestId('space-dms').click();
  await bob.locator('[data-testid="channel-item"][data-channel-name="Alice"]').click();
  await waitText(bob, 'review my PR', 'after a reload the DM keeps its history');

  // ---------- the long-poll fallback ----------
  step('long-poll');
  const lpPage = await t.newPage({ viewport: { width: 1024, height: 700 }, colorScheme: 'dark' });
  // WebSockets are cut here (as by a proxy that blocks them): after two failed attempts the client switches
  // to long-poll by itself.
  let wsAttempts = 0;
  await lpPage.routeWebSocket(/\/gateway/, (ws) => { wsAttempts += 1; ws.close({ code: 1011 }); });
  await lpPage.goto(`${baseUrl}/`);
  await lpPage.getByTestId('auth-tab-login').click();
  await lpPage.getByTestId('auth-username').fill(bobName);
  await lpPage.getByTestId('auth-password').fill(PASSWORD);
  await lpPage.getByTestId('auth-submit').click();
  await visible(lpPage, '[data-testid="app"]', 'the long-poll client signs in');
  await waitFor(() => lpPage.evaluate(() => document.documentElement.dataset.transport === 'longpoll'),
    { timeout: 10_000, message: 'the client falls back to long-poll' });
  assert.ok(wsAttempts >= 2, `the client tried the WebSocket first (${wsAttempts} attempts)`);
  await lpPage.locator('[data-testid="space-item"]').first().click();
  await lpPage.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).click();
  await waitText(lpPage, 'Welcome to chatd', 'the long-poll client loads history');
  await alice.locator('[data-testid="space-item"]').first().click();
  await alice.locator(`[data-testid="channel-item"][data-channel-name="${GEN}"]`).click();
  await waitFor(async () => (await alice.getByTestId('channel-title').textContent()) === GEN,
    { timeout: 5000, message: 'alice is back in #general' });
  await send(alice, 'Deploy is green ✅ great work everyone');
  // (bob's WebSocket device, showing the DM, marks the network unread until the long-poll device reads it)
  await waitFor(() => bob.evaluate(() =>
    document.querySelector('[data-testid="space-item"]')?.closest('li').classList.contains('unread')),
  { timeout: 10_000, interval: 20, message: 'bob\'s other device shows the new message as unread' });
  await waitText(lpPage, 'Deploy is green', 'the long-poll client receives a new message live');
  await send(lpPage, 'Sent from the long-poll client');
  await waitText(alice, 'Sent from the long-poll client', 'a message sent over REST from the long-poll client arrives');
  await waitFor(async () => (await msgByText(lpPage, 'Sent from the long-poll client').last().getAttribute('data-state')) === 'sent',
    { timeout: 10_000, message: 'the long-poll client marks its message sent' });
  const lastAlice = msgByText(lpPage, 'Deploy is green').last();
  await lastAlice.hover();
  await lastAlice.getByTestId('action-react').click();
  await lpPage.getByTestId('emoji-picker').locator('[data-emoji="🎉"]').click();
  await msgByText(alice, 'Deploy is green').last().locator('[data-testid="reaction"][data-emoji="🎉"]').waitFor({ timeout: 10_000 });
  await send(alice, 'Reacting back');
  await waitText(lpPage, 'Reacting back', 'long-poll keeps receiving');
  // bob's other device (the WebSocket one, showing the DM) learns that #general was read here: its unread
  // marker on the network space clears.
  await waitFor(() => bob.evaluate(() =>
    !document.querySelector('[data-testid="space-item"]')?.closest('li').classList.contains('unread')),
  { timeout: 10_000, message: 'reading on one device clears the unread marker on the other' });

  for (const [who, page] of [['alice', alice], ['bob', bob], ['long-poll bob', lpPage]]) {
    assert.equal(await page.evaluate(() => window.__xss), undefined, `${who}: window.__xss stays undefined`);
  }
  step('done');
}
