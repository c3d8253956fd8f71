// The upload page, enhanced: open the X archive here, in the browser, and send only
// account.js, follower*.js and following*.js (File API + DecompressionStream, ZIP64
// aware). When the browser cannot, send the whole file. Every text shown comes
// translated from the page (#upload-messages): this script holds none.
(() => {
  'use strict';

  const form = document.getElementById('upload-form');
  const messagesNode = document.getElementById('upload-messages');
  if (!form || !messagesNode || !window.fetch || !window.Blob || !Blob.prototype.stream) {
    return;
  }
  const messages = JSON.parse(messagesNode.textContent);
  const input = form.querySelector('input[type=file]');
  const button = form.querySelector('button[type=submit]');
  const box = document.getElementById('upload-progress');
  const bar = document.getElementById('upload-bar');
  const status = document.getElementById('upload-status');
  const live = document.getElementById('upload-live');

  const WANTED = /^(account|follower|following)(?:-part([0-9]{1,6}))?\.js$/i;
  const SIG_EOCD = 0x06054b50;
  const SIG_ZIP64_LOCATOR = 0x07064b50;
  const SIG_ZIP64_EOCD = 0x06064b50;
  const SIG_CENTRAL = 0x02014b50;
  const SIG_LOCAL = 0x04034b50;
  const MAX32 = 0xffffffff;
  const READ_SHARE = 0.4; // of the bar: reading locally, then sending

  class ArchiveProblem extends Error {
    constructor(code, params) {
      super(code);
      this.code = code;
      this.params = params || {};
    }
  }

  function say(text, fraction) {
    status.textContent = text;
    if (live.textContent !== text) {
      live.textContent = text;
    }
    if (fraction !== undefined) {
      bar.value = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
    }
  }

  function fill(template, params) {
    return template.replace(/%\((\w+)\)s/g, (whole, name) => (name in params ? params[name] : whole));
  }

  function showError(text) {
    let node = document.getElementById('error');
    if (!node) {
      node = document.createElement('div');
      node.id = 'error';
      node.className = 'error';
      node.setAttribute('role', 'alert');
      node.tabIndex = -1;
      form.parentNode.insertBefore(node, form);
    }
    node.textContent = '';
    const p = document.createElement('p');
    p.textContent = text;
    node.appendChild(p);
    node.focus();
  }

  function clearError() {
    const node = document.getElementById('error');
    if (node) {
      node.remove();
    }
  }

  async function bytes(file, start, end) {
    return new Uint8Array(await file.slice(start, end).arrayBuffer());
  }

  function view(array) {
    return new DataView(array.buffer, array.byteOffset, array.byteLength);
  }

  function u64(dv, at) {
    return dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 0x100000000;
  }

  // --- the zip's table of contents ----------------------------------------------------

  async function centralDirectory(file) {
    const tailLength = Math.min(file.size, 0xffff + 22 + 20);
    const tail = await bytes(file, file.size - tailLength, file.size);
    const dv = view(tail);
    let eocd = -1;
    for (let i = tail.length - 22; i >= 0; i -= 1) {
      if (dv.getUint32(i, true) === SIG_EOCD) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) {
      throw new ArchiveProblem('not_a_zip');
    }
    let count = dv.getUint16(eocd + 10, true);
    let size = dv.getUint32(eocd + 12, true);
    let offset = dv.getUint32(eocd + 16, true);
    if (count === 0xffff || size === MAX32 || offset === MAX32) {
      const locator = eocd - 20;
      if (locator < 0 || dv.getUint32(locator, true) !== SIG_ZIP64_LOCATOR) {
        throw new ArchiveProblem('corrupt');
      }
      const recordAt = u64(dv, locator + 8);
      const record = view(await bytes(file, recordAt, recordAt + 56));
      if (record.byteLength < 56 || record.getUint32(0, true) !== SIG_ZIP64_EOCD) {
        throw new ArchiveProblem('corrupt');
      }
      count = u64(record, 32);
      size = u64(record, 40);
      offset = u64(record, 48);
    }
    if (offset + size > file.size) {
      throw new ArchiveProblem('truncated');
    }
    return entries(await bytes(file, offset, offset + size), count);
  }

  function entries(table, count) {
    const dv = view(table);
    const decoder = new TextDecoder('utf-8');
    const found = [];
    let at = 0;
    while (found.length < count && at + 46 <= table.length) {
      if (dv.getUint32(at, true) !== SIG_CENTRAL) {
        throw new ArchiveProblem('corrupt');
      }
      const entry = {
        flags: dv.getUint16(at + 8, true),
        method: dv.getUint16(at + 10, true),
        crc: dv.getUint32(at + 16, true),
        compressed: dv.getUint32(at + 20, true),
        size: dv.getUint32(at + 24, true),
        offset: dv.getUint32(at + 42, true),
      };
      const nameLength = dv.getUint16(at + 28, true);
      const extraLength = dv.getUint16(at + 30, true);
      const commentLength = dv.getUint16(at + 32, true);
      entry.name = decoder.decode(table.subarray(at + 46, at + 46 + nameLength));
      // ZIP64 extra field: 64-bit values for those set to 0xFFFFFFFF, in this order.
      let x = at + 46 + nameLength;
      const extraEnd = x + extraLength;
      while (x + 4 <= extraEnd) {
        const id = dv.getUint16(x, true);
        const length = dv.getUint16(x + 2, true);
        if (id === 0x0001) {
          let y = x + 4;
          for (const key of ['size', 'compressed', 'offset']) {
            if (entry[key] === MAX32 && y + 8 <= x + 4 + length) {
              entry[key] = u64(dv, y);
              y += 8;
            }
          }
        }
        x += 4 + length;
      }
      found.push(entry);
      at = extraEnd + commentLength;
    }
    return found;
  }

  // The same choice as the server's reader: data/<wanted file>, in the shallowest folder.
  function wanted(all) {
    const byPrefix = new Map();
    for (const entry of all) {
      const path = entry.name.replace(/\\/g, '/');
      if (path.endsWith('/') || path.startsWith('/') || /^[A-Za-z]:/.test(path)) {
        continue;
      }
      const parts = path.split('/');
      if (parts.length < 2 || parts.some((p) => p === '' || p === '.' || p === '..')) {
        continue;
      }
      const match = WANTED.exec(parts[parts.length - 1]);
      if (!match || parts[parts.length - 2].toLowerCase() !== 'data') {
        continue;
      }
      const prefix = parts.slice(0, -2).join('/');
      if (!byPrefix.has(prefix)) {
        byPrefix.set(prefix, []);
      }
      byPrefix.get(prefix).push({ entry, kind: match[1].toLowerCase(), base: parts[parts.length - 1] });
    }
    if (byPrefix.size === 0) {
      throw new ArchiveProblem('missing_follow_files', {
        missing: 'data/follower.js, data/following.js',
      });
    }
    const depth = (p) => (p === '' ? 0 : p.split('/').length);
    const shallowest = Math.min(...[...byPrefix.keys()].map(depth));
    const top = [...byPrefix.keys()].filter((p) => depth(p) === shallowest);
    if (top.length > 1) {
      throw new ArchiveProblem('ambiguous_archive');
    }
    const chosen = byPrefix.get(top[0]);
    const kinds = new Set(chosen.map((c) => c.kind));
    const missing = ['following', 'follower'].filter((k) => !kinds.has(k));
    if (missing.length) {
      throw new ArchiveProblem('missing_follow_files', {
        missing: missing.map((k) => `data/${k}.js`).join(', '),
      });
    }
    return chosen;
  }

  // --- taking one file out --------------------------------------------------------------

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n;
      for (let k = 0; k < 8; k += 1) {
        c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      }
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(crc, chunk) {
    let c = crc;
    for (let i = 0; i < chunk.length; i += 1) {
      c = CRC_TABLE[(c ^ chunk[i]) & 0xff] ^ (c >>> 8);
    }
    return c;
  }

  async function extract(file, entry, onCompressed) {
    if (entry.flags & 1) {
      throw new ArchiveProblem('encrypted');
    }
    if (entry.method !== 0 && entry.method !== 8) {
      throw new ArchiveProblem('unsupported_compression');
    }
    const local = view(await bytes(file, entry.offset, entry.offset + 30));
    if (local.byteLength < 30 || local.getUint32(0, true) !== SIG_LOCAL) {
      throw new ArchiveProblem('corrupt');
    }
    const start = entry.offset + 30 + local.getUint16(26, true) + local.getUint16(28, true);
    if (start + entry.compressed > file.size) {
      throw new ArchiveProblem('truncated');
    }
    let stream = file.slice(start, start + entry.compressed).stream().pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          onCompressed(chunk.length);
          controller.enqueue(chunk);
        },
      }),
    );
    if (entry.method === 8) {
      stream = stream.pipeThrough(new DecompressionStream('deflate-raw'));
    }
    const reader = stream.getReader();
    const chunks = [];
    let size = 0;
    let crc = 0xffffffff;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          break;
        }
        size += value.length;
        if (size > entry.size) {
          throw new ArchiveProblem('corrupt');
        }
        crc = crc32(crc, value);
        chunks.push(value);
      }
    } catch (error) {
      if (error instanceof ArchiveProblem) {
        throw error;
      }
      throw new ArchiveProblem('corrupt');
    }
    if (size !== entry.size || ((crc ^ 0xffffffff) >>> 0) !== entry.crc) {
      throw new ArchiveProblem('corrupt');
    }
    return new Blob(chunks, { type: 'text/javascript' });
  }

  // --- sending ----------------------------------------------------------------------------

  function send(body, from, text) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', form.action);
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) {
          say(text, from + (1 - from) * (event.loaded / event.total));
        }
      };
      xhr.onload = () => {
        let answer = null;
        try {
          answer = JSON.parse(xhr.responseText);
        } catch (error) {
          answer = null;
        }
        resolve({ status: xhr.status, answer });
      };
      xhr.onerror = () => reject(new Error('network'));
      xhr.send(body);
    });
  }

  async function extractAll(file) {
    const chosen = wanted(await centralDirectory(file));
    const total = chosen.reduce((sum, c) => sum + c.entry.compressed, 0) || 1;
    let read = 0;
    const body = new FormData();
    body.append('csrf_token', form.elements.csrf_token.value);
    for (const { entry, base } of chosen) {
      const blob = await extract(file, entry, (n) => {
        read += n;
        say(messages.reading, READ_SHARE * (read / total));
      });
      body.append('files', blob, base);
    }
    return body;
  }

  function wholeFile(file) {
    const body = new FormData();
    body.append('csrf_token', form.elements.csrf_token.value);
    body.append('archive', file, file.name);
    return body;
  }

  function finish(result) {
    if (result.status >= 200 && result.status < 300 && result.answer && result.answer.next) {
      say(messages.done, 1);
      window.location.assign(result.answer.next);
      return true;
    }
    const error = result.answer && result.answer.error;
    showError(error && error.message ? error.message : messages.generic);
    return false;
  }

  form.addEventListener('submit', async (event) => {
    const file = input.files && input.files[0];
    if (!file) {
      return;
    }
    event.preventDefault();
    clearError();
    button.disabled = true;
    box.hidden = false;
    form.setAttribute('aria-busy', 'true');
    say(messages.reading, 0);
    let done = false;
    try {
      let body = null;
      let text = messages.sending;
      if (typeof DecompressionStream === 'function') {
        try {
          body = await extractAll(file);
        } catch (error) {
          if (error instanceof ArchiveProblem) {
            throw error;
          }
          body = null; // the browser could not open it: let the server read the whole file
        }
      }
      if (body === null) {
        body = wholeFile(file);
        text = messages.sending_whole;
      }
      say(text, body.has('archive') ? 0 : READ_SHARE);
      done = finish(await send(body, body.has('archive') ? 0 : READ_SHARE, text));
    } catch (error) {
      if (error instanceof ArchiveProblem) {
        showError(fill(messages[error.code] || messages.generic, error.params));
      } else {
        showError(messages.upload_failed);
      }
    } finally {
      if (!done) {
        button.disabled = false;
        box.hidden = true;
        form.removeAttribute('aria-busy');
      }
    }
  });
})();
