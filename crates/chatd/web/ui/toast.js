// Transient notifications at the bottom right; errors stay a little longer.
import { h } from '../dom.js';

let host = null;
export function toast(message, kind = 'info', ms = kind === 'error' ? 6000 : 3500) {
  if (!host) {
    host = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite', 'data-testid': 'toasts' });
    document.body.appendChild(host);
  }
  const el = h('div', { class: `toast toast-${kind}` }, h('span', { text: message }),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => el.remove(), text: '×' }));
  host.appendChild(el);
  setTimeout(() => { el.classList.add('leaving'); setTimeout(() => el.remove(), 300); }, ms);
}

export function toastError(e) { toast(e?.message || String(e), 'error'); }
