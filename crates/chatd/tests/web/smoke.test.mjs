// The web client is served safely: headers, caching, content types, 404s, and a clean first load in Chromium
// under the strict Content-Security-Policy.

export default async function (t) {
  const { assert, baseUrl } = t;

  // `/`: HTML, strict CSP, nosniff, ETag with revalidation.
  const index = await fetch(`${baseUrl}/`);
  assert.equal(index.status, 200, 'GET / status');
  assert.match(index.headers.get('content-type') || '', /^text\/html/i, 'GET / content-type');
  const csp = index.headers.get('content-security-policy') || '';
  assert.ok(csp, 'GET / has a Content-Security-Policy header');
  assert.doesNotMatch(csp, /unsafe-inline/, 'CSP allows no inline code');
  assert.doesNotMatch(csp, /unsafe-eval/, 'CSP allows no eval');
  assert.match(csp, /script-src 'self'/, 'CSP restricts scripts to the origin');
  assert.equal((index.headers.get('x-content-type-options') || '').toLowerCase(), 'nosniff');
  const etag = index.headers.get('etag');
  assert.ok(etag, 'GET / has an ETag');
  await index.text();
  const again = await fetch(`${baseUrl}/`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304, 'revalidation with the ETag answers 304');
  await again.arrayBuffer();

  // Static files: JavaScript content type, CSP there too; unknown files are 404.
  const main = await fetch(`${baseUrl}/static/main.js`);
  assert.equal(main.status, 200, 'GET /static/main.js status');
  assert.match(main.headers.get('content-type') || '', /^(text|application)\/javascript/i, 'main.js content-type');
  assert.ok(main.headers.get('content-security-policy'), 'static files carry the CSP too');
  await main.text();
  const md = await fetch(`${baseUrl}/static/markdown.js`);
  assert.equal(md.status, 200, 'GET /static/markdown.js status');
  await md.text();
  const missing = await fetch(`${baseUrl}/static/x.js`);
  assert.equal(missing.status, 404, 'an unknown static file is 404');
  await missing.arrayBuffer();
  const traversal = await fetch(`${baseUrl}/static/..%2F..%2FCargo.toml`);
  assert.notEqual(traversal.status, 200, 'no path traversal out of the web directory');
  await traversal.arrayBuffer();

  // A first load in the browser: no console errors, no CSP violations, a sign-in form shows.
  const page = await t.newPage({ viewport: { width: 1280, height: 800 } });
  const response = await page.goto(`${baseUrl}/`, { waitUntil: 'load' });
  assert.equal(response.status(), 200);
  await page.locator('input').first().waitFor({ state: 'visible', timeout: 15_000 });
  await page.waitForTimeout(300);
  const d = t.diagnostics(page);
  assert.deepEqual(d.pageErrors, [], 'no uncaught errors on load');
  assert.deepEqual(d.cspViolations, [], 'no CSP violations on load');
  // The browser's own favicon probe is not the page's doing.
  const consoleErrors = d.consoleErrors.filter((e) => !/\/favicon\.ico\b/.test(e));
  assert.deepEqual(consoleErrors, [], 'no console errors on load');
  await t.screenshot(page, 'sign-in');
}
