// One user on two doors at once: the web client in a browser and an IRC client (a raw socket speaking IRC)
// logged in to the same account. What each sends appears on the other, once: the session is the server's.

import net from 'node:net';
import { apiClient, register, openAs, openChannel, msgByText, PASSWORD } from './support.mjs';

/** A line-oriented IRC connection: `send(line)`, `until(predicate)` -> the first line matching. */
function ircConnect(addr) {
  const [host, port] = addr.split(':');
  const socket = net.connect(Number(port), host);
  socket.setEncoding('utf8');
  const lines = [];
  let partial = '';
  const waiters = [];
  socket.on('data', (chunk) => {
    partial += chunk;
    let i;
    while ((i = partial.indexOf('\r\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 2);
      if (line.startsWith('PING ')) socket.write(`PONG ${line.slice(5)}\r\n`);
      lines.push(line);
      for (const w of [...waiters]) w();
    }
  });
  const seen = () => lines;
  return {
    send: (line) => socket.write(`${line}\r\n`),
    seen,
    until: (pred, timeout = 15_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find(pred);
          if (hit !== undefined) {
            waiters.splice(waiters.indexOf(check), 1);
            clearTimeout(timer);
            resolve(hit);
          }
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(check), 1);
          reject(new Error(`no such IRC line within ${timeout} ms; saw:\n${lines.join('\n')}`));
        }, timeout);
        waiters.push(check);
        check();
      }),
    close: () => socket.end(),
  };
}

export default async function (t) {
  const { assert, baseUrl, ircAddr, waitFor } = t;
  assert.ok(ircAddr, 'CHATD_IRC must name the IRC door of CHATD_URL (crates/chatd/tests/it/web.rs sets it)');
  const api = apiClient(baseUrl);
  const tag = Math.random().toString(36).slice(2, 7);
  const channel = `irc${tag}`;
  const me = await register(api, `wi${tag}`);
  await api('POST', '/api/v1/messages', me.token, { command: 'JOIN', to: `#${channel}` });

  // The IRC client: the same account, a device of its own.
  const irc = ircConnect(ircAddr);
  irc.send(`PASS :${PASSWORD}`);
  irc.send(`NICK wi${tag}`);
  irc.send(`USER desk 0 * :desk`);
  await irc.until((l) => l.includes(` 001 wi${tag} `));
  // The account's channel comes with the registration.
  await irc.until((l) => l.endsWith(`JOIN #${channel}`));

  const page = await openAs(t, me.token);
  await openChannel(page, channel);

  // Web -> IRC: the IRC client reads its own user's line (from another device), once.
  const box = page.getByTestId('composer-input');
  await box.fill(`typed in the browser ${tag}`);
  await box.press('Enter');
  const line = await irc.until((l) => l.endsWith(`PRIVMSG #${channel} :typed in the browser ${tag}`));
  assert.ok(line.startsWith(`:wi${tag}!`), line);

  // IRC -> web.
  irc.send(`PRIVMSG #${channel} :typed in irc ${tag}`);
  await msgByText(page, `typed in irc ${tag}`).waitFor({ timeout: 15_000 });

  // Each once: a PING round trip later, the IRC side has the browser's line once, and the page shows the
  // IRC line once.
  irc.send('PING :settled');
  await irc.until((l) => l.endsWith(':settled') && l.includes('PONG'));
  assert.equal(irc.seen().filter((l) => l.includes(`typed in the browser ${tag}`)).length, 1);
  assert.equal(irc.seen().filter((l) => l.includes(`typed in irc ${tag}`)).length, 0, 'no echo without echo-message');
  await waitFor(async () => (await msgByText(page, `typed in irc ${tag}`).count()) === 1, {
    timeout: 5_000,
    message: 'the IRC line shows once in the browser',
  });
  assert.equal(await msgByText(page, `typed in the browser ${tag}`).count(), 1);
  irc.close();
}
