// Message markdown: turns a message's text into DOM nodes (never HTML strings), Discord style.
//
//   renderMarkdown(text, ctx) -> DocumentFragment
//   mentionsMe(text, ctx) -> boolean
//
// ctx: {
//   userName(id) -> string|null      display name of a user id (for <@id> and <@!id>)
//   channelName(id) -> string|null   name of a channel id, without '#' (for <#id>)
//   roleName(id) -> string|null      name of a role id (for <@&id>)
//   meId: string, meName: string     the viewer
//   findUser(name) -> id|null        optional: resolves a plain @name
//   findChannel(name) -> id|null     optional: resolves a plain #name
// }
//
// Supported: **bold**, __bold__, *italic*, _italic_ (not inside words), ***bold italic***, ~~strike~~,
// `code`, ``code with ` inside``, ```lang\ncode blocks```, "> " quote lines, ">>> " quotes the rest of the
// message, ||spoilers||, http(s) auto-links and <http(s)://...>, <@id> <@!id> <@&id> <#id>, @name, @everyone,
// @here, #channel, :shortcode: emoji, backslash escapes of ASCII punctuation, newlines as <br>.
// Unclosed markers stay literal. Parsing is linear in the input (closers are found through precomputed,
// sorted position lists, never by backtracking).
//
// Produced elements and classes: strong, em, s, code.inline, pre.codeblock > code[.lang-xxx],
// blockquote.quote, span.spoiler (role=button; gets .revealed when activated), a.link, span.mention
// (+ .mention-me when it addresses the viewer, + .role-mention for roles; data-user-id / data-role-id),
// span.channel-link (data-channel-id when known, data-channel-name for plain #name), span.emoji, br.

import { EMOJI } from './emoji.js';

const MAX_DEPTH = 12;
const LANG_RE = /^[A-Za-z0-9_+#.-]{1,32}$/;
const ID_MENTION_RE = /<(@!?|@&|#)(\d{1,25})>/y;
const ANGLE_URL_RE = /<(https?:\/\/[^\s<>]{1,4000})>/iy;
const URL_RE = /https?:\/\/[^\s<]{1,4000}/iy;
const NAME_RE = /@([A-Za-z0-9_\-[\]^{}]{1,32})/y;
const CHANNEL_RE = /#([A-Za-z0-9_\-.]{1,64})/y;
const EMOJI_RE = /:([A-Za-z0-9_+-]{1,40}):/y;
const URL_TRAILING = '.,:;!?\'"*_~|>';

function isPunct(code) {
  return (code >= 33 && code <= 47) || (code >= 58 && code <= 64) || (code >= 91 && code <= 96) || (code >= 123 && code <= 126);
}
function isWordChar(ch) {
  return ch !== undefined && /[A-Za-z0-9]/.test(ch);
}
function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}
function txt(s) {
  return document.createTextNode(s);
}

function call(ctx, name, arg) {
  try {
    const fn = ctx && ctx[name];
    if (typeof fn !== 'function') return null;
    const v = fn.call(ctx, arg);
    return v === undefined || v === null || v === '' ? null : String(v);
  } catch {
    return null;
  }
}

function lower(s) {
  return String(s ?? '').toLowerCase();
}

// --- Inline parsing -------------------------------------------------------------------------------------

class Inline {
  constructor(s, ctx) {
    this.s = s;
    this.ctx = ctx;
    const n = s.length;
    // esc[i] = 1: the character at i is escaped by a backslash at i-1.
    const esc = new Uint8Array(n + 1);
    for (let i = 0; i < n - 1; i++) {
      if (s.charCodeAt(i) === 92 && isPunct(s.charCodeAt(i + 1))) {
        esc[i + 1] = 1;
        i++;
      }
    }
    this.esc = esc;
    // run[i] = length of the run of one delimiter character starting at i (0 elsewhere).
    this.run = new Int32Array(n + 1);
    // closers: key (char + run length) -> ascending start positions of runs that may close.
    this.closers = new Map();
    // openers: key (char + run length) -> ascending start positions of runs that may open.
    this.openers = new Map();
    for (let i = 0; i < n; ) {
      const c = s[i];
      if (!esc[i] && (c === '*' || c === '_' || c === '~' || c === '|')) {
        let j = i + 1;
        while (j < n && s[j] === c && !esc[j]) j++;
        const len = j - i;
        this.run[i] = len;
        if (this.isCloser(c, i, len)) push(this.closers, c + len, i);
        if (this.isOpener(c, i, len)) push(this.openers, c + len, i);
        i = j;
      } else {
        i++;
      }
    }
  }

  isCloser(c, i, len) {
    const s = this.s;
    switch (c) {
      case '*':
        return len <= 3 && !isSpace(s[i - 1]);
      case '_':
        return len <= 3 && (len === 2 || !isWordChar(s[i + len]));
      default:
        return len === 2;
    }
  }

  isOpener(c, i, len) {
    const s = this.s;
    switch (c) {
      case '*':
        return len <= 3 && !isSpace(s[i + len]);
      case '_':
        return len <= 3 && !isSpace(s[i + len]) && (len === 2 || !isWordChar(s[i - 1]));
      default:
        return len === 2;
    }
  }

  // The last opening run for `key` in [from, to), or -1.
  findOpener(key, from, to) {
    const list = this.openers.get(key);
    if (!list) return -1;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid] < to) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 && list[lo - 1] >= from ? list[lo - 1] : -1;
  }

  // The first closing run for `key` starting at or after `from` that ends by `end`, or -1.
  findCloser(key, from, end, len) {
    const list = this.closers.get(key);
    if (!list) return -1;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid] < from) lo = mid + 1;
      else hi = mid;
    }
    if (lo < list.length && list[lo] + len <= end) return list[lo];
    return -1;
  }

  parse(start, end, parent, depth) {
    const s = this.s;
    let i = start;
    let textStart = start;
    const flush = (upto) => {
      if (upto > textStart) parent.appendChild(txt(s.slice(textStart, upto)));
    };
    while (i < end) {
      const c = s[i];
      if (c === '\\' && i + 1 < end && this.esc[i + 1]) {
        flush(i);
        textStart = i + 1;
        i += 2;
        continue;
      }
      if (c === '\n') {
        flush(i);
        parent.appendChild(el('br'));
        i++;
        textStart = i;
        continue;
      }
      let r = null;
      switch (c) {
        case '`':
          r = this.code(i, end);
          break;
        case '*':
        case '_':
        case '~':
        case '|':
          r = this.delim(i, end, depth);
          break;
        case '<':
          r = this.angle(i, end);
          break;
        case '@':
          r = this.at(i, end);
          break;
        case '#':
          r = this.hash(i, end);
          break;
        case ':':
          r = this.emoji(i, end);
          break;
        case 'h':
        case 'H':
          r = this.url(i, end);
          break;
        default:
          break;
      }
      if (r && r.node) {
        flush(i);
        parent.appendChild(r.node);
        i = r.next;
        textStart = i;
      } else if (r && r.skip) {
        i += r.skip; // literal text, kept in the pending text run
      } else {
        i++;
      }
    }
    flush(end);
  }

  code(i, end) {
    const s = this.s;
    let k = 0;
    while (i + k < end && s[i + k] === '`') k++;
    if (k > 2) return { skip: k };
    const fence = k === 1 ? '`' : '``';
    const j = s.indexOf(fence, i + k);
    if (j < 0 || j === i + k || j + k > end) return { skip: k };
    let body = s.slice(i + k, j);
    if (k === 2 && body.length > 2 && body.startsWith(' ') && body.endsWith(' ')) body = body.slice(1, -1);
    const node = el('code', 'inline');
    node.textContent = body;
    return { node, next: j + k };
  }

  delim(i, end, depth) {
    const c = this.s[i];
    const len = this.run[i];
    if (!len) return null;
    if (depth >= MAX_DEPTH || !this.isOpener(c, i, len)) return { skip: len };
    const j = this.findCloser(c + len, i + len + 1, end, len);
    if ((c === '*' || c === '_') && len < 3) {
      // "*a **b***" and "**a *b***": a run of three closes this one and an unclosed inner one of the
      // other length.
      const other = 3 - len;
      const t = this.findCloser(c + '3', i + len + 1, end, 3);
      if (t >= 0 && (j < 0 || t < j)) {
        const o = this.findOpener(c + other, i + len, t);
        if (o >= 0 && o + other < t) {
          const inside = this.findCloser(c + other, o + other + 1, end, other);
          if (inside < 0 || inside >= t) {
            const outer = el(len === 1 ? 'em' : 'strong');
            const inner = el(other === 1 ? 'em' : 'strong');
            this.parse(i + len, o, outer, depth + 1);
            this.parse(o + other, t, inner, depth + 2);
            outer.appendChild(inner);
            return { node: outer, next: t + 3 };
          }
        }
      }
    }
    if (j < 0) return { skip: len };
    let node;
    let inner;
    if (c === '~') {
      node = inner = el('s');
    } else if (c === '|') {
      node = inner = spoiler();
    } else if (len === 1) {
      node = inner = el('em');
    } else if (len === 2) {
      node = inner = el('strong');
    } else {
      node = el('strong');
      inner = el('em');
      node.appendChild(inner);
    }
    this.parse(i + len, j, inner, depth + 1);
    return { node, next: j + len };
  }

  angle(i, end) {
    const s = this.s;
    ID_MENTION_RE.lastIndex = i;
    let m = ID_MENTION_RE.exec(s);
    if (m && ID_MENTION_RE.lastIndex <= end) {
      const kind = m[1];
      const id = m[2];
      let node;
      if (kind === '#') {
        node = el('span', 'channel-link');
        node.dataset.channelId = id;
        node.textContent = '#' + (call(this.ctx, 'channelName', id) ?? 'unknown-channel');
      } else if (kind === '@&') {
        node = el('span', 'mention role-mention');
        node.dataset.roleId = id;
        node.textContent = '@' + (call(this.ctx, 'roleName', id) ?? 'unknown-role');
      } else {
        node = el('span', 'mention');
        node.dataset.userId = id;
        node.textContent = '@' + (call(this.ctx, 'userName', id) ?? 'unknown-user');
        if (this.ctx && this.ctx.meId !== undefined && this.ctx.meId !== null && String(this.ctx.meId) === id) {
          node.classList.add('mention-me');
        }
      }
      return { node, next: ID_MENTION_RE.lastIndex };
    }
    ANGLE_URL_RE.lastIndex = i;
    m = ANGLE_URL_RE.exec(s);
    if (m && ANGLE_URL_RE.lastIndex <= end) {
      const node = link(m[1]);
      if (node) return { node, next: ANGLE_URL_RE.lastIndex };
    }
    return null;
  }

  at(i, end) {
    const s = this.s;
    if (isWordChar(s[i - 1])) return null;
    NAME_RE.lastIndex = i;
    const m = NAME_RE.exec(s);
    if (!m) return null;
    let name = m[1];
    if (i + 1 + name.length > end) name = name.slice(0, Math.max(0, end - i - 1));
    if (!name) return null;
    const ln = lower(name);
    if (ln === 'everyone' || ln === 'here') {
      const node = el('span', 'mention mention-me');
      node.textContent = '@' + name;
      return { node, next: i + 1 + name.length };
    }
    // Try the whole name, then without trailing punctuation ("@bob-" or "@alice]").
    const candidates = [name];
    const trimmed = name.replace(/[-[\]^{}_]+$/, '');
    if (trimmed && trimmed !== name) candidates.push(trimmed);
    const ctx = this.ctx || {};
    for (const cand of candidates) {
      const lc = lower(cand);
      let id = null;
      let me = false;
      if (ctx.meName && lower(ctx.meName) === lc) {
        me = true;
        id = ctx.meId !== undefined && ctx.meId !== null ? String(ctx.meId) : null;
      } else {
        id = call(ctx, 'findUser', cand);
        if (id !== null && ctx.meId !== undefined && ctx.meId !== null && id === String(ctx.meId)) me = true;
      }
      if (me || id !== null) {
        const node = el('span', me ? 'mention mention-me' : 'mention');
        if (id !== null) node.dataset.userId = id;
        node.textContent = '@' + cand;
        return { node, next: i + 1 + cand.length };
      }
    }
    // Unknown name: literal text, consumed whole so '_' inside it never starts italics.
    return { skip: 1 + name.length };
  }

  hash(i, end) {
    const s = this.s;
    if (isWordChar(s[i - 1]) || s[i - 1] === '&') return null;
    CHANNEL_RE.lastIndex = i;
    const m = CHANNEL_RE.exec(s);
    if (!m) return null;
    let name = m[1].replace(/[.-]+$/, '');
    if (i + 1 + name.length > end) name = name.slice(0, Math.max(0, end - i - 1));
    if (!name || /^\d+$/.test(name)) return null;
    const node = el('span', 'channel-link');
    node.dataset.channelName = name;
    const id = call(this.ctx, 'findChannel', name);
    if (id !== null) node.dataset.channelId = id;
    node.textContent = '#' + name;
    return { node, next: i + 1 + name.length };
  }

  emoji(i, end) {
    EMOJI_RE.lastIndex = i;
    const m = EMOJI_RE.exec(this.s);
    if (!m || EMOJI_RE.lastIndex > end) return null;
    const name = m[1].toLowerCase();
    if (!Object.prototype.hasOwnProperty.call(EMOJI, name)) return null;
    const node = el('span', 'emoji');
    node.setAttribute('role', 'img');
    node.setAttribute('aria-label', ':' + name + ':');
    node.title = ':' + name + ':';
    node.textContent = EMOJI[name];
    return { node, next: EMOJI_RE.lastIndex };
  }

  url(i, end) {
    const s = this.s;
    if (isWordChar(s[i - 1])) return null;
    URL_RE.lastIndex = i;
    const m = URL_RE.exec(s);
    if (!m) return null;
    let raw = m[0].slice(0, end - i);
    // Trailing punctuation belongs to the sentence; a trailing ')' only if unbalanced.
    for (;;) {
      const last = raw[raw.length - 1];
      if (URL_TRAILING.includes(last)) {
        raw = raw.slice(0, -1);
      } else if (last === ')' && count(raw, '(') < count(raw, ')')) {
        raw = raw.slice(0, -1);
      } else {
        break;
      }
    }
    const node = link(raw);
    if (!node) return null;
    return { node, next: i + raw.length };
  }
}

function push(map, key, value) {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  list.push(value);
}

function count(s, ch) {
  let n = 0;
  for (let i = 0; i < s.length; i++) if (s[i] === ch) n++;
  return n;
}

// An <a> for an http(s) URL, or null when the text is not one.
function link(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  if (!url.hostname) return null;
  const a = el('a', 'link');
  a.href = url.href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  a.textContent = raw;
  return a;
}

function spoiler() {
  const node = el('span', 'spoiler');
  node.setAttribute('role', 'button');
  node.tabIndex = 0;
  node.setAttribute('aria-label', 'Spoiler, activate to reveal');
  node.setAttribute('aria-expanded', 'false');
  const reveal = (ev) => {
    if (node.classList.contains('revealed')) return;
    ev.preventDefault();
    ev.stopPropagation();
    node.classList.add('revealed');
    node.setAttribute('aria-expanded', 'true');
    node.removeAttribute('aria-label');
  };
  node.addEventListener('click', reveal);
  node.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') reveal(ev);
  });
  return node;
}

function renderInline(s, ctx, parent) {
  if (!s) return;
  new Inline(s, ctx).parse(0, s.length, parent, 0);
}

// --- Blocks: code fences, then quotes -------------------------------------------------------------------

function escapedAt(s, pos) {
  let n = 0;
  for (let k = pos - 1; k >= 0 && s.charCodeAt(k) === 92; k--) n++;
  return n % 2 === 1;
}

// Splits the text into text pieces and ``` code blocks.
function splitFences(s) {
  const pieces = [];
  let pos = 0;
  let from = 0;
  while (from < s.length) {
    const open = s.indexOf('```', from);
    if (open < 0) break;
    if (escapedAt(s, open)) {
      from = open + 1;
      continue;
    }
    const close = s.indexOf('```', open + 3);
    if (close < 0) break;
    const raw = s.slice(open + 3, close);
    if (!raw.trim()) {
      from = close + 3;
      continue;
    }
    pieces.push({ text: s.slice(pos, open) });
    pieces.push({ code: raw });
    pos = from = close + 3;
  }
  pieces.push({ text: s.slice(pos) });
  return pieces;
}

function codeBlock(raw) {
  let body = raw;
  let lang = '';
  const nl = body.indexOf('\n');
  if (nl > 0) {
    const first = body.slice(0, nl);
    if (LANG_RE.test(first) && body.slice(nl + 1).trim() !== '') {
      lang = first.toLowerCase();
      body = body.slice(nl + 1);
    }
  } else if (nl === 0) {
    body = body.slice(1);
  }
  if (body.endsWith('\n')) body = body.slice(0, -1);
  const pre = el('pre', 'codeblock');
  const code = el('code');
  if (lang) code.className = 'lang-' + lang;
  code.textContent = body;
  pre.appendChild(code);
  return pre;
}

function renderText(s, atLineStart, ctx, state) {
  if (!state.quotes) {
    renderInline(s, ctx, state.out);
    return;
  }
  const lines = s.split('\n');
  let normal = [];
  let quoted = [];
  const flushNormal = () => {
    if (normal.length) renderInline(normal.join('\n'), ctx, state.out);
    normal = [];
  };
  const flushQuoted = () => {
    if (quoted.length) {
      const bq = el('blockquote', 'quote');
      renderInline(quoted.join('\n'), ctx, bq);
      state.out.appendChild(bq);
    }
    quoted = [];
  };
  for (let k = 0; k < lines.length; k++) {
    const line = lines[k];
    const lineStart = k > 0 || atLineStart;
    if (lineStart && line.startsWith('>>> ')) {
      flushNormal();
      flushQuoted();
      const bq = el('blockquote', 'quote');
      state.out.appendChild(bq);
      state.out = bq;
      state.quotes = false;
      renderInline([line.slice(4), ...lines.slice(k + 1)].join('\n'), ctx, bq);
      return;
    }
    if (lineStart && line.startsWith('> ')) {
      flushNormal();
      quoted.push(line.slice(2));
    } else {
      flushQuoted();
      normal.push(line);
    }
  }
  flushNormal();
  flushQuoted();
}

function renderBlocks(text, ctx, frag) {
  const state = { out: frag, quotes: true };
  const pieces = splitFences(text);
  let atLineStart = true;
  for (let k = 0; k < pieces.length; k++) {
    const p = pieces[k];
    if (p.code !== undefined) {
      state.out.appendChild(codeBlock(p.code));
      continue;
    }
    let s = p.text;
    if (k > 0) {
      // The code block before is a block of its own: drop the line break right after it.
      atLineStart = s.startsWith('\n');
      if (atLineStart) s = s.slice(1);
    }
    if (k + 1 < pieces.length && s.endsWith('\n')) s = s.slice(0, -1);
    renderText(s, atLineStart, ctx, state);
  }
}

/** Renders message text as a DocumentFragment. Never throws; never interprets the text as HTML. */
export function renderMarkdown(text, ctx) {
  const source = typeof text === 'string' ? text : String(text ?? '');
  const frag = document.createDocumentFragment();
  try {
    renderBlocks(source, ctx || {}, frag);
  } catch {
    while (frag.firstChild) frag.removeChild(frag.firstChild);
    frag.appendChild(txt(source));
  }
  return frag;
}

/** Whether the text addresses the viewer: <@meId>, @meName, @everyone or @here (outside code). */
export function mentionsMe(text, ctx) {
  try {
    return renderMarkdown(text, ctx).querySelector('.mention-me') !== null;
  } catch {
    return false;
  }
}
