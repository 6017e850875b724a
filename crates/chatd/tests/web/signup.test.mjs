// Sign-up from the sign-in screen: the password rule shows before submit and a too-short password is stopped
// in the page, and a guest signs up with the proof of work the server asks for (HASHCASH_BITS), minted by a
// Web Worker with WebCrypto while a meter shows progress, under the page's strict CSP.
//
// crates/chatd/tests/it/web.rs runs this file a second time against a server with HASHCASH_BITS=16 and
// EXPECT_HASHCASH_BITS=16, where the stamp is required; in the main run (bits 0) a guest needs none.

export default async function (t) {
  const { assert, baseUrl, waitFor, log } = t;
  const tag = Math.random().toString(36).slice(2, 7);
  const info = await (await fetch(`${baseUrl}/api/v1/server`)).json();
  const bits = info.hashcash.bits;
  if (process.env.EXPECT_HASHCASH_BITS) {
    assert.equal(bits, Number(process.env.EXPECT_HASHCASH_BITS), 'the server advertises HASHCASH_BITS');
  }
  log(`hashcash bits ${bits}`);

  // Without a stamp the server refuses a guest when it asks for work, and says how much.
  const bare = await fetch(`${baseUrl}/api/v1/session`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ nick: `bare${tag}` }),
  });
  const bareBody = await bare.json();
  if (bits > 0) {
    assert.equal(bare.status, 402, 'a guest without a stamp gets 402');
    assert.equal(bareBody.error, 'hashcash_required');
    assert.equal(bareBody.bits, bits);
  } else {
    assert.equal(bare.status, 200, `no stamp is needed at 0 bits: ${JSON.stringify(bareBody)}`);
  }

  const page = await t.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${baseUrl}/`);
  await page.getByTestId('auth-form').waitFor({ timeout: 15_000 });

  // The rule is on screen in sign-up mode, and a short password (counted in characters) never leaves the page.
  await page.getByTestId('auth-tab-register').click();
  const rule = page.getByTestId('auth-password-rule');
  await rule.waitFor({ state: 'visible' });
  assert.match(await rule.textContent(), /at least 8 characters/i);
  let posted = 0;
  page.on('request', (r) => { if (r.url().endsWith('/auth/register')) posted++; });
  await page.getByTestId('auth-username').fill(`short${tag}`);
  await page.getByTestId('auth-password').fill('ééééééé');
  await page.getByTestId('auth-submit').click();
  await page.locator('[data-testid="auth-error"]:not(:empty)').waitFor({ timeout: 5_000 });
  assert.match(await page.getByTestId('auth-error').textContent(), /at least 8 characters/);
  assert.equal(posted, 0, 'the form did not send a password the rule refuses');
  // A common password passes the length check and is refused by the server with its reason.
  await page.getByTestId('auth-password').fill('password1');
  await page.getByTestId('auth-submit').click();
  await waitFor(async () => /common/.test(await page.getByTestId('auth-error').textContent()),
    { timeout: 10_000, message: 'the server refuses a common password with its reason' });

  // A guest: the meter shows while the worker computes the stamp, then the app opens.
  await page.getByTestId('auth-tab-guest').click();
  await page.getByTestId('auth-username').fill(`guest${tag}`);
  const started = Date.now();
  await page.getByTestId('auth-submit').click();
  if (bits > 0) {
    await page.getByTestId('auth-pow').waitFor({ state: 'visible', timeout: 5_000 });
    assert.match(await page.getByTestId('auth-pow-text').textContent(), /proof of work/i);
  }
  await page.getByTestId('app').waitFor({ timeout: 120_000 });
  log(`guest signed up in ${Date.now() - started} ms`);
  const me = await waitFor(() => page.evaluate(() => document.querySelector('[data-testid="me-name"]')?.textContent),
    { timeout: 10_000, message: 'the app shows the guest signed in' });
  assert.equal(me, `guest${tag}`);
  const d = t.diagnostics(page);
  assert.deepEqual(d.cspViolations, [], 'the worker runs under the strict CSP');
  assert.deepEqual(d.pageErrors, []);
}
