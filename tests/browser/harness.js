// What tests/test_browser_uploads.py runs in the page. Long work runs as a job:
// the test starts it, then polls window.jobs[name] ({progress, done, error,
// result}) while it kills and restarts the daemon.
window.jobs = {};
window.files = {};

function job(name, work) {
  const state = window.jobs[name] = { progress: 0, done: false, error: null, result: null, log: [] };
  work(state).then(
    (result) => { state.result = result; state.done = true; },
    (error) => { state.error = describe(error); state.done = true; });
  return name;
}

function describe(error) {
  return { name: error?.name, message: String(error?.message ?? error), status: error?.status ?? null,
           code: error?.code ?? null };
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

// A file of `size` bytes made in the page: random 1 MiB blocks, each made
// unique by its number, and its sha256.
window.makeFile = (name, size) => job(`file:${name}`, async () => {
  const block = new Uint8Array(1 << 20);
  for (let i = 0; i < block.length; i += 65536) crypto.getRandomValues(block.subarray(i, i + 65536));
  const parts = [];
  for (let done = 0, n = 0; done < size; done += block.length, n++) {
    const part = block.slice(0, Math.min(block.length, size - done));
    if (part.length >= 4) new DataView(part.buffer).setUint32(0, n);
    parts.push(part);
  }
  const file = new File(parts, name, { type: 'application/octet-stream' });
  const sha256 = hex(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
  window.files[name] = { file, sha256 };
  return { size: file.size, sha256 };
});

// Uppy with @uppy/tus, as the dashboard uses it.
window.uppyUpload = (jobName, fileName, options) => job(jobName, async (state) => {
  const uppy = new window.Uppy({ autoProceed: false });
  uppy.use(window.Tus, {
    endpoint: options.endpoint,
    headers: { Authorization: `Bearer ${options.token}` },
    chunkSize: options.chunkSize ?? Infinity,
    retryDelays: options.retryDelays ?? [100, 1000, 3000, 5000],
    addRequestId: options.addRequestId ?? true,
    removeFingerprintOnSuccess: true,
  });
  uppy.on('upload-progress', (file, progress) => { state.progress = progress.bytesUploaded; });
  uppy.on('upload-error', (file, error, response) => {
    state.log.push({ event: 'upload-error', message: String(error?.message),
                     status: response?.status ?? null });
  });
  uppy.on('upload-success', (file, response) => {
    state.log.push({ event: 'upload-success', url: response.uploadURL });
  });
  const { file } = window.files[fileName];
  uppy.addFile({ name: file.name, type: file.type, data: file, meta: options.meta ?? {} });
  const result = await uppy.upload();
  return { successful: result.successful.map((f) => ({ name: f.name, url: f.response?.uploadURL })),
           failed: result.failed.map((f) => ({ name: f.name, error: String(f.error) })) };
});

// The reference chunk-protocol client (clients/js/chunked-upload.js).
window.chunkedUpload = (jobName, fileName, options) => job(jobName, async (state) => {
  const { file, sha256 } = window.files[fileName];
  const controller = new AbortController();
  state.abort = () => controller.abort();
  const upload = new window.ChunkedUpload({
    ...options, file, sha256, signal: controller.signal,
  });
  upload.onUploadId = (id) => { state.uploadId = id; };
  upload.onProgress = (sent) => { state.progress = sent; };
  try {
    const stored = await upload.start();
    return { file: stored, chunksSent: upload.chunksSent, totalChunks: upload.totalChunks };
  } finally {
    state.chunksSent = upload.chunksSent;
  }
});

// One fetch, and what the page can read of its answer.
window.fetchJob = (jobName, url, init) => job(jobName, async () => {
  const answer = await fetch(url, init);
  const text = await answer.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: answer.status, body, wwwAuthenticate: answer.headers.get('WWW-Authenticate'),
           requestId: answer.headers.get('X-Request-ID') };
});
