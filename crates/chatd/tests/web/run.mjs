// End-to-end test runner for the chatd web client: headless Chromium driven by playwright-core.
//
//   CHATD_URL=http://127.0.0.1:PORT node run.mjs
//
// Environment:
//   CHATD_URL        base URL of a running chatd (required; a trailing '/' is dropped)
//   CHATD_PEER_URL   base URL of a second chatd linked to it by federation (for federation.test.mjs)
//   CHATD_IRC        HOST:PORT of CHATD_URL's IRC door (for irc.test.mjs)
//   CHROMIUM         Chromium executable (default /usr/bin/chromium)
//   SCREENSHOT_DIR   where t.screenshot() writes PNGs (default <repo>/docs/screenshots)
//   FILTER           only run test files whose name contains this string
//   TIMEOUT_MS       global time limit for the whole run (default 300000)
//   HEADED=1         show the browser window (debugging)
//
// Every `*.test.mjs` file in this directory is imported in name order and its default export is awaited:
//
//   export default async function (t) { ... }
//
// with t = {
//   baseUrl      string, CHATD_URL without a trailing '/'
//   peerUrl      string, CHATD_PEER_URL without a trailing '/' (undefined when not set)
//   ircAddr      string, CHATD_IRC (undefined when not set)
//   browser      the playwright-core Browser
//   newPage(options?) -> Promise<Page>
//                a page in a new browser context (`options` go to browser.newContext, e.g. { viewport });
//                every page records console errors, uncaught page errors and CSP violations
//                (securitypolicyviolation events); contexts are closed when the test file ends
//   diagnostics(page) -> { consoleErrors: string[], pageErrors: string[], cspViolations: string[] }
//                what that page recorded so far (live arrays)
//   screenshot(page, name) -> Promise<string>
//                writes SCREENSHOT_DIR/name.png, returns the path
//   assert       node:assert/strict
//   log(...args) prints a line prefixed with the test file's name
//   waitFor(fn, { timeout = 10000, interval = 100, message }?) -> Promise<value>
//                calls fn (may be async) until it returns a truthy value, which it resolves to; a throw
//                counts as "not yet"; after `timeout` ms it rejects with `message` and the last error
//   file         the test file's name
//   restartServer() -> Promise<void>
//                stops chatd gracefully and starts it again on the same address and database, when the
//                runner was started by crates/chatd/tests/it/web.rs (CHATD_RESTART=1): it prints
//                `@@chatd-restart` and waits for `@@chatd-restarted` on stdin; otherwise it throws
// }
//
// A file passes when its function resolves. The run exits 0 only if every file passed and no page of any
// file recorded a page error or CSP violation (console errors are printed but do not fail the run by
// themselves; a test can assert on them through t.diagnostics(page)).

import assert from 'node:assert/strict';
import { mkdir, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..', '..');

const baseUrl = (process.env.CHATD_URL || '').replace(/\/+$/, '');
if (!baseUrl) {
  console.error('run.mjs: set CHATD_URL to the base URL of a running chatd, e.g. http://127.0.0.1:8080');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`run.mjs: no Chromium at ${executablePath} (apt-get install -y chromium, or set CHROMIUM)`);
  process.exit(2);
}
const screenshotDir = process.env.SCREENSHOT_DIR || join(repo, 'docs', 'screenshots');
const filter = process.env.FILTER || '';
const timeoutMs = Number(process.env.TIMEOUT_MS) > 0 ? Number(process.env.TIMEOUT_MS) : 300_000;

let browser = null;
let finished = false;
let current = null; // the test file running now

const globalTimer = setTimeout(async () => {
  if (finished) return;
  console.error(`run.mjs: global timeout of ${timeoutMs} ms reached${current ? ` during ${current}` : ''}; aborting`);
  try {
    await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5000))]);
  } finally {
    process.exit(3);
  }
}, timeoutMs);
globalTimer.unref();

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    try {
      await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 3000))]);
    } finally {
      process.exit(130);
    }
  });
}

const CSP_HOOK = `
document.addEventListener('securitypolicyviolation', (e) => {
  try {
    window.__chatdTestCsp && window.__chatdTestCsp(
      e.violatedDirective + ' blocked ' + (e.blockedURI || '(inline)') +
      (e.sourceFile ? ' at ' + e.sourceFile + ':' + e.lineNumber : '') +
      (e.sample ? ' sample ' + JSON.stringify(e.sample) : ''));
  } catch (_) {}
});`;

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Lines from the process that started us (the restart handshake).
const stdinLines = process.env.CHATD_RESTART === '1'
  ? createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  : null;

async function restartServer() {
  if (!stdinLines) throw new Error('restartServer: only when run by the cargo test (CHATD_RESTART=1)');
  console.log('@@chatd-restart');
  for (;;) {
    const { value, done } = await stdinLines.next();
    if (done) throw new Error('restartServer: stdin closed before the server came back');
    if (value.trim() === '@@chatd-restarted') return;
  }
}

async function waitFor(fn, { timeout = 10_000, interval = 100, message = 'condition not met' } = {}) {
  const deadline = Date.now() + timeout;
  let lastError = null;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      lastError = null;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? `: ${lastError.message || lastError}` : '';
      throw new Error(`waitFor timed out after ${timeout} ms: ${message}${detail}`);
    }
    await sleep(interval);
  }
}

async function runFile(file) {
  const contexts = [];
  const diag = new Map(); // page -> diagnostics
  const prefix = `[${file}]`;
  const log = (...args) => console.log(prefix, ...args);

  const t = {
    baseUrl,
    peerUrl: (process.env.CHATD_PEER_URL || '').replace(/\/+$/, '') || undefined,
    ircAddr: process.env.CHATD_IRC || undefined,
    browser,
    file,
    assert,
    log,
    waitFor,
    restartServer,
    async newPage(options = {}) {
      const context = await browser.newContext(options);
      contexts.push(context);
      const d = { consoleErrors: [], pageErrors: [], cspViolations: [] };
      await context.exposeBinding('__chatdTestCsp', (_source, text) => {
        d.cspViolations.push(String(text));
      });
      await context.addInitScript({ content: CSP_HOOK });
      const page = await context.newPage();
      diag.set(page, d);
      page.on('console', (msg) => {
        if (msg.type() === 'error') {
          const loc = msg.location();
          d.consoleErrors.push(`${msg.text()}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`);
        }
      });
      page.on('pageerror', (err) => {
        d.pageErrors.push(err && err.stack ? err.stack : String(err));
      });
      return page;
    },
    diagnostics(page) {
      const d = diag.get(page);
      if (!d) throw new Error('diagnostics: not a page from t.newPage()');
      return d;
    },
    async screenshot(page, name) {
      await mkdir(screenshotDir, { recursive: true });
      const path = join(screenshotDir, `${name}.png`);
      await page.screenshot({ path });
      log(`screenshot ${path}`);
      return path;
    },
  };

  const started = Date.now();
  let error = null;
  try {
    const mod = await import(pathToFileURL(join(here, file)).href);
    if (typeof mod.default !== 'function') throw new Error('no default export function');
    await mod.default(t);
  } catch (e) {
    error = e;
  }
  for (const c of contexts) {
    await Promise.race([c.close().catch(() => {}), sleep(5000)]);
  }
  const problems = [];
  const consoleNotes = [];
  let index = 0;
  for (const d of diag.values()) {
    index++;
    for (const e of d.pageErrors) problems.push(`page ${index}: page error: ${e}`);
    for (const e of d.cspViolations) problems.push(`page ${index}: CSP violation: ${e}`);
    for (const e of d.consoleErrors) consoleNotes.push(`page ${index}: console error: ${e}`);
  }
  return { file, ms: Date.now() - started, error, problems, consoleNotes };
}

async function main() {
  const files = (await readdir(here)).filter((f) => f.endsWith('.test.mjs') && f.includes(filter)).sort();
  if (files.length === 0) {
    console.error(`run.mjs: no *.test.mjs files${filter ? ` matching FILTER=${filter}` : ''} in ${here}`);
    return 2;
  }
  console.log(`run.mjs: ${files.length} file(s) against ${baseUrl} with ${executablePath}`);
  browser = await chromium.launch({
    executablePath,
    headless: process.env.HEADED !== '1',
    args: ['--no-sandbox'],
  });
  const results = [];
  try {
    for (const file of files) {
      console.log(`--- ${file}`);
      current = file;
      const r = await runFile(file);
      current = null;
      results.push(r);
      for (const n of r.consoleNotes) console.log(`  ${n}`);
      for (const p of r.problems) console.log(`  ${p}`);
      if (r.error) {
        console.log(`FAIL ${file} (${r.ms} ms)`);
        console.log(String(r.error && r.error.stack ? r.error.stack : r.error).replace(/^/gm, '  '));
      } else if (r.problems.length) {
        console.log(`FAIL ${file} (${r.ms} ms): ${r.problems.length} page error(s) / CSP violation(s)`);
      } else {
        console.log(`ok   ${file} (${r.ms} ms)`);
      }
    }
  } finally {
    await Promise.race([browser.close().catch(() => {}), sleep(10_000)]);
  }
  const failed = results.filter((r) => r.error || r.problems.length);
  console.log(`run.mjs: ${results.length - failed.length} passed, ${failed.length} failed`);
  for (const r of failed) console.log(`  failed: ${r.file}`);
  return failed.length ? 1 : 0;
}

main()
  .then((code) => {
    finished = true;
    process.exit(code);
  })
  .catch(async (e) => {
    finished = true;
    console.error('run.mjs:', e && e.stack ? e.stack : e);
    await Promise.race([browser?.close().catch(() => {}), sleep(5000)]);
    process.exit(1);
  });
