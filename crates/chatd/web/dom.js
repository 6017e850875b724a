// Tiny DOM helpers. Everything is built with createElement/textContent: user data never goes through HTML
// parsing, and nothing sets inline style attributes (the page's CSP forbids them).

/** h('div', {class: 'x', 'data-testid': 'y', onclick: fn, text: 'hi'}, child, ...) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (k === 'checked' || k === 'disabled' || k === 'hidden' || k === 'multiple') el[k] = !!v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** An inline SVG icon from a small path set (no external assets needed). */
const ICONS = {
  hash: 'M10 3 8 21M16 3l-2 18M4 8h17M3 16h17',
  search: 'M11 4a7 7 0 1 0 0 14 7 7 0 0 0 0-14zM21 21l-5-5',
  users: 'M16 19v-1a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v1M9 4a3 3 0 1 1 0 6 3 3 0 0 1 0-6zM22 19v-1a4 4 0 0 0-3-3.9M16 4.1a3 3 0 0 1 0 5.8',
  pin: 'M9 4h6l-1 6 4 3v2h-5v6l-1 1-1-1v-6H6v-2l4-3z',
  gear: 'M12 9a3 3 0 1 0 0 6 3 3 0 0 0 0-6zM19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-2.9 1.2V21a2 2 0 1 1-4 0v-.1A1.7 1.7 0 0 0 7 19.4a1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1A1.7 1.7 0 0 0 1.2 14H1a2 2 0 1 1 0-4h.1A1.7 1.7 0 0 0 4.6 7a1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1A1.7 1.7 0 0 0 9 1.2V1a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 2.9 1.2l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1A1.7 1.7 0 0 0 19.4 9H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 2z',
  menu: 'M3 6h18M3 12h18M3 18h18',
  plus: 'M12 5v14M5 12h14',
  smile: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM8 14s1.5 2 4 2 4-2 4-2M9 9h.01M15 9h.01',
  reply: 'M9 14 4 9l5-5M4 9h10a6 6 0 0 1 6 6v4',
  edit: 'M12 20h9M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4z',
  trash: 'M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6',
  thread: 'M4 5h16v10H8l-4 4z',
  x: 'M6 6l12 12M18 6 6 18',
  chat: 'M21 12a8 8 0 0 1-12 7l-5 1 1-4a8 8 0 1 1 16-4z',
  bell: 'M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9M13.7 21a2 2 0 0 1-3.4 0',
  upload: 'M12 16V4M6 10l6-6 6 6M4 20h16',
  logout: 'M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9',
};
export function icon(name, cls = 'icon') {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls);
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS(NS, 'path');
  p.setAttribute('d', ICONS[name] || '');
  svg.appendChild(p);
  return svg;
}

/** An icon button with an accessible label (and the same text as tooltip). */
export function iconButton(name, label, onclick, attrs = {}) {
  return h('button', { type: 'button', class: 'icon-btn', 'aria-label': label, title: label, onclick, ...attrs }, icon(name));
}

/** A stable colour index (0..7) from an id, for avatars. */
export function colorIndex(id) {
  // FNV-1a: ids that differ only in their last digits still spread over the palette.
  let x = 0x811c9dc5;
  for (const ch of String(id)) x = Math.imul(x ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return ((x ^ (x >>> 16)) >>> 0) % 8;
}

export function avatar(user, size = '') {
  const name = displayName(user);
  const letter = (name.match(/[\p{L}\p{N}]/u) || ['?'])[0].toUpperCase();
  return h('div', { class: `avatar av-${colorIndex(user?.id ?? name)} ${size}`, 'aria-hidden': 'true' }, letter);
}

/** The linked server a remote user lives on (its username is `nick@server`), or null for a local user. */
export function remoteServer(user) {
  const name = user?.username || '';
  const at = name.lastIndexOf('@');
  return at > 0 ? name.slice(at + 1) : null;
}

/** The mark beside a remote user's name: the server it lives on. */
export function remoteTag(user) {
  const server = remoteServer(user);
  if (!server) return null;
  return h('span', {
    class: 'tag-remote', 'data-testid': 'remote-tag', title: `A user of the linked server ${server}`, text: `🌐 ${server}`,
  });
}

export function displayName(user) {
  if (!user) return 'unknown';
  return user.global_name || user.username || 'unknown';
}

const pad = (n) => String(n).padStart(2, '0');
export function hhmm(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}
export function fullDate(date) {
  return date.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'short' });
}
export function dayLabel(date) {
  const today = new Date();
  const y = new Date(); y.setDate(today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return 'Today';
  if (date.toDateString() === y.toDateString()) return 'Yesterday';
  return date.toLocaleDateString(undefined, { year: 'numeric', month: 'long', day: 'numeric' });
}
