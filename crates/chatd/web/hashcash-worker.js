// Mints a hashcash stamp off the main thread, so that the page stays responsive while it works.
//
// In:  { bits, resource, date, rand } where date is the UTC day as YYMMDD and rand is base64 text.
// Out: { progress: tried } after each batch, then { stamp } once SHA-256 of the stamp starts with `bits` zero
//      bits, or { error } when WebCrypto is missing (it needs a secure context: HTTPS or localhost).

const BATCH = 512;
const encoder = new TextEncoder();

function zeroBits(buf) {
  const bytes = new Uint8Array(buf);
  let n = 0;
  for (const b of bytes) {
    if (b === 0) { n += 8; continue; }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

self.onmessage = async (e) => {
  const { bits, resource, date, rand } = e.data;
  if (!self.crypto || !self.crypto.subtle) {
    self.postMessage({ error: 'This browser offers no WebCrypto here (it needs HTTPS)' });
    return;
  }
  const prefix = `1:${bits}:${date}:${resource}::${rand}:`;
  let counter = 0;
  for (;;) {
    // Digests are asynchronous: a batch of them in flight at once costs far less than one after another.
    const stamps = [];
    for (let i = 0; i < BATCH; i++) stamps.push(prefix + (counter + i).toString(16));
    const hashes = await Promise.all(stamps.map((s) => self.crypto.subtle.digest('SHA-256', encoder.encode(s))));
    const found = hashes.findIndex((h) => zeroBits(h) >= bits);
    if (found >= 0) {
      self.postMessage({ stamp: stamps[found] });
      return;
    }
    counter += BATCH;
    self.postMessage({ progress: counter });
  }
};
