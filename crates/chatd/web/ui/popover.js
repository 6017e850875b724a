// One popover at a time, anchored to an element; Escape or a click outside closes it and focus returns.
import { h } from '../dom.js';

let open = null;

export function closePopover() {
  if (!open) return false;
  const { el, anchor, onClose } = open;
  open = null;
  el.remove();
  onClose?.();
  if (anchor && document.contains(anchor)) anchor.focus({ preventScroll: true });
  return true;
}

export function isPopoverOpen() { return !!open; }

/** Shows `content` in a popover near `anchor`. placement: 'below' | 'above' | 'left'. */
export function popover(anchor, content, { label = 'Popover', testid, placement = 'below', onClose, cls = '' } = {}) {
  closePopover();
  const el = h('div', { class: `popover ${cls}`, role: 'dialog', 'aria-label': label, 'data-testid': testid }, content);
  document.body.appendChild(el);
  const r = anchor.getBoundingClientRect();
  const pw = el.offsetWidth; const ph = el.offsetHeight;
  const vw = window.innerWidth; const vh = window.innerHeight;
  let top = placement === 'above' ? r.top - ph - 6 : r.bottom + 6;
  let left = placement === 'left' ? r.left - pw - 8 : r.right - pw;
  if (placement === 'left') top = r.top;
  if (top + ph > vh - 8) top = Math.max(8, r.top - ph - 6);
  if (top < 8) top = 8;
  left = Math.min(Math.max(8, left), vw - pw - 8);
  el.style.top = `${top}px`;
  el.style.left = `${left}px`;
  open = { el, anchor, onClose };
  const first = el.querySelector('input, button, [tabindex="0"]');
  first?.focus({ preventScroll: true });
  return el;
}

document.addEventListener('mousedown', (e) => {
  if (open && !open.el.contains(e.target) && !open.anchor?.contains(e.target)) closePopover();
}, true);

/** A small form in a popover instead of window.prompt: resolves to the text, or null when dismissed. */
export function askText(anchor, { title, label, value = '', placeholder = '', action = 'OK', testid = 'ask-popover', danger = false, noInput = false, submit = null }) {
  // With `submit` (an async action), the popover stays open until the action succeeds: a refusal is shown
  // in it beside the text the user typed, so that nothing they meant for it goes anywhere else.
  return new Promise((resolve) => {
    let done = false;
    let busy = false;
    const finish = (v) => { if (done) return; done = true; resolve(v); };
    const input = noInput ? null : h('input', { class: 'ask-input', value, placeholder, 'aria-label': label || title, 'data-testid': 'ask-input', maxlength: 100 });
    const error = h('p', { class: 'ask-error', role: 'alert', 'data-testid': 'ask-error', hidden: true });
    const ok = h('button', { type: 'submit', class: `btn btn-small ${danger ? 'btn-danger' : 'btn-primary'}`, 'data-testid': 'ask-submit', text: action });
    const form = h('form', {
      class: 'ask', onsubmit: async (e) => {
        e.preventDefault();
        if (busy) return;
        const v = noInput ? '' : input.value.trim();
        if (!noInput && !v) { input.focus(); return; }
        if (submit) {
          busy = true; ok.disabled = true; error.hidden = true;
          try {
            await submit(v);
          } catch (err) {
            busy = false; ok.disabled = false;
            error.textContent = err?.message || String(err);
            error.hidden = false;
            input?.focus();
            return;
          }
        }
        finish(v);
        closePopover();
      },
    }, h('h3', { class: 'pop-title', text: title }),
    h('div', { class: 'ask-body' }, input, error,
      h('div', { class: 'ask-actions' },
        h('button', { type: 'button', class: 'btn btn-small ask-cancel', text: 'Cancel', onclick: () => closePopover() }),
        ok)));
    popover(anchor, form, { label: title, testid, onClose: () => finish(null) });
    if (input) { input.focus(); input.select(); } else ok.focus();
  });
}
