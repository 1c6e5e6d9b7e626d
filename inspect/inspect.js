// The Blobs inspector: a bucket's blobs, content and Blob Service uploads, live, built on the
// client library (blobs-client.js, the library's browser bundle). The token lives in this
// module's memory only: never in a URL, a cookie or storage. Everything a blob holds is shown
// as text nodes or as an image from a blob: URL, never as markup.
import { connect, text } from './blobs-client.js';

const PAGE = 50;
/// Content and uploads up to this size get an image thumbnail in the lists.
const THUMBNAIL_LIMIT = 2 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const state = {
  token: null,
  client: null,
  tab: 'blobs',
  next: null,
  stopWatch: null,
  open: null,
  /// The version the editor's text was taken from: a save names it.
  base: undefined,
  dirty: false,
  data: null,
  urls: [],
};

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'className') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function status(message) {
  $('status').textContent = message;
}

function api(path, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${state.token}`);
  return fetch(path, { ...init, headers });
}

function bytesLabel(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

function objectUrl(bytes, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  state.urls.push(url);
  return url;
}

/// An image type for bytes that start like one.
function imageType(bytes) {
  const starts = (...sig) => sig.every((b, i) => bytes[i] === b);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'image/png';
  if (starts(0xff, 0xd8, 0xff)) return 'image/jpeg';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'image/gif';
  const webp = [0x57, 0x45, 0x42, 0x50].every((b, i) => bytes[8 + i] === b);
  if (starts(0x52, 0x49, 0x46, 0x46) && webp) return 'image/webp';
  return null;
}

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = event.target.token.value.trim();
  state.token = token;
  const probe = await api('/v1/blobs?limit=1');
  if (probe.status === 401) {
    status('This token is refused (invalid, expired or revoked).');
    return;
  }
  state.client?.close();
  state.client = connect(location.origin, { token });
  $('tabs').hidden = false;
  $('main').hidden = false;
  status('Connected.');
  await showTab('blobs');
});

for (const button of document.querySelectorAll('#tabs button')) {
  button.addEventListener('click', () => showTab(button.dataset.tab));
}

$('more').addEventListener('click', () => loadPage());

async function showTab(tab) {
  state.tab = tab;
  state.next = null;
  for (const button of document.querySelectorAll('#tabs button')) {
    button.classList.toggle('active', button.dataset.tab === tab);
  }
  closeDetail();
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
  $('entries').replaceChildren();
  await loadPage();
}

/// The next page of the current tab's list.
async function loadPage() {
  const after = state.next ? encodeURIComponent(state.next) : '';
  const path = {
    blobs: `/v1/blobs?limit=${PAGE}${after && `&after=${after}`}`,
    content: `/blobs/?limit=${PAGE}${after && `&after=${after}`}`,
    service: `/api/v1/blobs?limit=${PAGE}${after && `&cursor=${after}`}`,
  }[state.tab];
  const response = await api(path);
  if (!response.ok) {
    status(`Listing failed: ${response.status}`);
    return;
  }
  const page = await response.json();
  for (const entry of page.blobs) $('entries').append(listItem(entry));
  state.next = page.next ?? null;
  $('more').hidden = !state.next;
  if ($('entries').children.length === 0) {
    $('entries').append(element('li', { className: 'meta' }, 'Nothing here yet.'));
  }
}

function listItem(entry) {
  if (state.tab === 'blobs') {
    const meta = element('span', { className: 'meta' }, `v${entry.version} · ${bytesLabel(entry.size)}`);
    const item = element('li', { dataset: { ref: entry.ref } }, element('code', {}, entry.ref), meta);
    item.addEventListener('click', () => openBlob(entry.ref));
    return item;
  }
  if (state.tab === 'content') {
    const item = element(
      'li',
      { dataset: { hash: entry.hash } },
      element('code', {}, entry.hash),
      element('span', { className: 'meta' }, bytesLabel(entry.size)),
    );
    if (entry.size <= THUMBNAIL_LIMIT) {
      state.client.content.get(entry.hash).then((bytes) => thumbnail(item, bytes), () => {});
    }
    item.addEventListener('click', () => openContent(entry));
    return item;
  }
  const label = entry.fileName ?? entry.semantics;
  const item = element(
    'li',
    { dataset: { handle: entry.handle } },
    element('code', {}, label),
    element('span', { className: 'meta' }, `${entry.contentType} · ${bytesLabel(entry.size)}`),
  );
  if (entry.contentType.startsWith('image/') && entry.size <= THUMBNAIL_LIMIT) {
    uploadBytes(entry.handle).then((bytes) => thumbnail(item, bytes, entry.contentType), () => {});
  }
  item.addEventListener('click', () => openUpload(entry));
  return item;
}

function thumbnail(item, bytes, type = imageType(bytes)) {
  if (!type) return;
  item.prepend(element('img', { src: objectUrl(bytes, type), alt: '' }));
}

async function uploadBytes(handle) {
  const response = await api(`/api/v1/blobs/${handle}`);
  if (!response.ok) throw new Error(`${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

function closeDetail() {
  state.stopWatch?.();
  state.stopWatch = null;
  state.open = null;
  $('detail').hidden = true;
  $('detail').classList.remove('flash');
  for (const item of document.querySelectorAll('#entries li.open')) item.classList.remove('open');
}

function facts(pairs) {
  $('facts').replaceChildren(
    ...pairs.flatMap(([name, value, data]) => [
      element('dt', {}, name),
      element('dd', data ? { dataset: data } : {}, String(value)),
    ]),
  );
}

/// Shows the detail of the list item `selector` names, under `title`, with the editor or not.
function showDetail(selector, title, editable) {
  closeDetail();
  for (const item of document.querySelectorAll('#entries li')) {
    item.classList.toggle('open', item.matches(selector));
  }
  $('title').textContent = title;
  $('detail').hidden = false;
  $('editor').hidden = !editable;
}

/// A blob, live: its value follows every change; the editor saves with compare-and-swap.
function openBlob(ref) {
  showDetail(`[data-ref="${ref}"]`, ref, true);
  state.open = ref;
  state.dirty = false;
  state.base = undefined;
  $('conflict').hidden = true;
  $('edit').value = '';
  facts([['version', '—', { version: '' }]]);
  state.stopWatch = state.client.blob(ref).watch(async (value) => {
    if (state.open !== ref) return;
    state.data = value ? value.data : null;
    if (!state.dirty) {
      state.base = value?.version;
      $('edit').value = value ? text(value.data) : '';
    }
    const head = value ? await api(`/v1/blobs/${ref}`, { method: 'HEAD' }) : null;
    if (state.open !== ref) return;
    facts([
      ['version', value ? value.version : 'none (missing or deleted)', { version: String(value?.version ?? '') }],
      ['size', value ? bytesLabel(value.data.length) : '—'],
      ['updated', head?.headers.get('last-modified') ?? '—'],
    ]);
    const item = document.querySelector(`#entries li[data-ref="${ref}"] .meta`);
    if (item && value) item.textContent = `v${value.version} · ${bytesLabel(value.data.length)}`;
    $('detail').classList.remove('flash');
    void $('detail').offsetWidth;
    $('detail').classList.add('flash');
    render();
  });
}

async function openContent(entry) {
  showDetail(`[data-hash="${entry.hash}"]`, entry.hash, false);
  facts([['size', bytesLabel(entry.size)]]);
  state.data = await state.client.content.get(entry.hash);
  render();
}

async function openUpload(entry) {
  showDetail(`[data-handle="${entry.handle}"]`, entry.handle, false);
  facts([
    ['semantics', entry.semantics],
    ['file name', entry.fileName ?? '—'],
    ['type', entry.contentType],
    ['size', bytesLabel(entry.size)],
    ['created', new Date(entry.created).toISOString()],
    ['retention', JSON.stringify(entry.retentionPolicy)],
    ['hash', entry.hash],
  ]);
  state.data = await uploadBytes(entry.handle);
  render();
}

for (const radio of document.querySelectorAll('input[name="view"]')) {
  radio.addEventListener('change', () => render());
}

/// The open data in the chosen view.
function render() {
  const view = document.querySelector('input[name="view"]:checked').value;
  const bytes = state.data;
  const preview = $('preview');
  if (!bytes) {
    preview.replaceChildren(element('p', { className: 'meta' }, 'No data.'));
    return;
  }
  if (view === 'image') {
    const type = imageType(bytes);
    preview.replaceChildren(
      type
        ? element('img', { src: objectUrl(bytes, type), alt: 'preview' })
        : element('p', { className: 'meta' }, 'Not a PNG, JPEG, GIF or WebP image.'),
    );
  } else if (view === 'json') {
    let shown;
    try {
      shown = JSON.stringify(JSON.parse(text(bytes)), null, 2);
    } catch {
      shown = 'Not JSON.';
    }
    preview.replaceChildren(element('pre', {}, shown));
  } else if (view === 'hex') {
    const lines = [];
    for (let offset = 0; offset < Math.min(bytes.length, 64 * 1024); offset += 16) {
      const row = [...bytes.subarray(offset, offset + 16)];
      const hex = row.map((b) => b.toString(16).padStart(2, '0')).join(' ');
      const ascii = row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
      lines.push(`${offset.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
    }
    preview.replaceChildren(element('pre', {}, lines.join('\n')));
  } else {
    preview.replaceChildren(element('pre', {}, text(bytes)));
  }
}

$('edit').addEventListener('input', () => {
  state.dirty = true;
});

$('save').addEventListener('click', async () => {
  const ref = state.open;
  const result = await state.client.blob(ref).set($('edit').value, { version: state.base });
  if (result.success) {
    state.base = result.version;
    state.dirty = false;
    $('conflict').hidden = true;
    status(`Saved version ${result.version}.`);
    return;
  }
  $('conflict').hidden = false;
  $('conflict-message').textContent =
    `Conflict: the blob is at version ${result.version}; your edit of version ` +
    `${state.base ?? '(none)'} was not saved.`;
  $('conflict-data').textContent = result.data ? text(result.data) : '(no data)';
  $('conflict').dataset.version = String(result.version);
  state.conflict = result;
});

$('rebase').addEventListener('click', () => {
  const current = state.conflict;
  if (!current) return;
  state.base = current.version;
  $('edit').value = current.data ? text(current.data) : '';
  state.dirty = true;
  $('conflict').hidden = true;
});
