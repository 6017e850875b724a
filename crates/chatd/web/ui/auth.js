// The sign-in screen: log in, sign up, or join as a guest with a nick only.
import { h } from '../dom.js';
import { login, register, guest, auth, serverInfo, mintStamp, passwordProblem, PASSWORD_MIN, PASSWORD_MAX } from '../api.js';

export function renderAuth(root, onDone) {
  let mode = 'login';
  const err = h('p', { class: 'auth-error', role: 'alert', 'data-testid': 'auth-error' });
  const name = h('input', { id: 'auth-name', name: 'username', autocomplete: 'username', required: true, maxlength: 32, 'data-testid': 'auth-username' });
  const pass = h('input', { id: 'auth-pass', name: 'password', type: 'password', autocomplete: 'current-password', required: true, 'data-testid': 'auth-password' });
  // The rule is shown before submit, in sign-up mode, and checked as it is typed.
  const rule = h('p', {
    id: 'auth-pass-rule', class: 'field-hint', 'data-testid': 'auth-password-rule',
    text: `At least ${PASSWORD_MIN} characters (up to ${PASSWORD_MAX}); any characters, spaces too. Very common passwords are refused.`,
  });
  pass.setAttribute('aria-describedby', 'auth-pass-rule');
  const passRow = h('div', { class: 'field' }, h('label', { for: 'auth-pass', text: 'Password' }), pass, rule);
  // Guest sign-up may need proof of work: shown while the browser computes it.
  const meter = h('progress', { max: 1, value: 0, 'aria-label': 'Proof of work' });
  const meterText = h('span', { class: 'field-hint', 'data-testid': 'auth-pow-text' });
  const pow = h('div', { class: 'auth-pow', 'data-testid': 'auth-pow', hidden: true, role: 'status' }, meterText, meter);
  pass.addEventListener('input', () => {
    if (mode === 'register') rule.classList.toggle('field-hint-bad', Boolean(pass.value) && Boolean(passwordProblem(pass.value)));
  });
  const nameLabel = h('label', { for: 'auth-name', text: 'Username' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', 'data-testid': 'auth-submit' });
  const tabs = ['login', 'register', 'guest'].map((m) => h('button', {
    type: 'button', role: 'tab', class: 'auth-tab', 'data-mode': m, 'data-testid': `auth-tab-${m}`,
    text: { login: 'Log in', register: 'Sign up', guest: 'Guest' }[m],
    onclick: () => { mode = m; update(); },
  }));
  const title = h('h1', { class: 'auth-title' });
  const sub = h('p', { class: 'auth-sub' });

  function update() {
    for (const t of tabs) t.setAttribute('aria-selected', String(t.dataset.mode === mode));
    passRow.hidden = mode === 'guest';
    rule.hidden = mode !== 'register';
    pow.hidden = true;
    pass.required = mode !== 'guest';
    pass.autocomplete = mode === 'register' ? 'new-password' : 'current-password';
    nameLabel.textContent = mode === 'guest' ? 'Nickname' : 'Username';
    submit.textContent = { login: 'Log in', register: 'Create account', guest: 'Join as guest' }[mode];
    title.textContent = { login: 'Welcome back!', register: 'Create an account', guest: 'Jump right in' }[mode];
    sub.textContent = {
      login: 'We are so excited to see you again.',
      register: 'Pick a name people will recognise.',
      guest: 'No password: your nick is freed when you leave.',
    }[mode];
    err.textContent = '';
  }

  const form = h('form', {
    class: 'auth-card', 'data-testid': 'auth-form', novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = '';
      const n = name.value.trim();
      if (!n) { err.textContent = 'Please enter a name.'; name.focus(); return; }
      if (mode !== 'guest' && !pass.value) { err.textContent = 'Please enter a password.'; pass.focus(); return; }
      if (mode === 'register' && passwordProblem(pass.value)) { err.textContent = passwordProblem(pass.value); pass.focus(); return; }
      submit.disabled = true;
      try {
        const r = mode === 'login' ? await login(n, pass.value)
          : mode === 'register' ? await register(n, pass.value) : await joinAsGuest(n);
        auth.set(r.token);
        onDone();
      } catch (ex) {
        err.textContent = ex.message;
      } finally {
        submit.disabled = false;
        pow.hidden = true;
      }
    },
  },
  h('div', { class: 'auth-brand' }, h('div', { class: 'brand-mark', 'aria-hidden': 'true', text: '#' }), h('span', { text: 'chatd' })),
  title, sub,
  h('div', { class: 'auth-tabs', role: 'tablist', 'aria-label': 'Sign-in method' }, tabs),
  h('div', { class: 'field' }, nameLabel, name),
  passRow, pow, err, submit);

  // A guest signs up with a stamp when the server asks for one (HASHCASH_BITS), minted in a worker while a
  // meter shows the work; a 402 (the setting changed since the page asked) is answered once with a new stamp.
  async function work(bits, resource) {
    pow.hidden = false;
    meter.value = 0;
    meterText.textContent = 'Checking you are not a flood of bots: computing a proof of work…';
    const stamp = await mintStamp(bits, resource, (f) => {
      meter.value = f;
      meterText.textContent = `Computing a proof of work… ${Math.round(f * 100)}%`;
    });
    meterText.textContent = 'Proof of work done.';
    return stamp;
  }
  async function joinAsGuest(n) {
    const info = await serverInfo().catch(() => null);
    const hc = info && info.hashcash;
    const stamp = hc && hc.bits > 0 ? await work(hc.bits, hc.resource) : undefined;
    try {
      return await guest(n, stamp);
    } catch (ex) {
      if (ex.status !== 402 || !ex.body || !(ex.body.bits > 0)) throw ex;
      return guest(n, await work(ex.body.bits, ex.body.resource || (hc && hc.resource) || ''));
    }
  }

  const hero = h('section', { class: 'auth-hero', 'aria-label': 'About' },
    h('h2', { text: 'Your own chat server.' }),
    h('p', { text: 'Channels, nicks and topics like IRC. Reactions, replies, threads and presence like the apps you know. Your session lives on the server, so reloading, sleeping or switching networks never loses a message.' }),
    h('ul', { class: 'auth-points' },
      h('li', { text: 'Pick up exactly where you left off, on every device' }),
      h('li', { text: 'Slash commands: /join, /nick, /topic, /me…' }),
      h('li', { text: 'Self-hosted: one binary, one port, one file' })));

  root.replaceChildren(h('main', { class: 'auth-page', 'data-testid': 'auth-page' }, h('div', { class: 'auth-wrap' }, form, hero)));
  update();
  name.focus();
}
