// A reference client for hpcportal's chunk protocol (docs/uploads.md), for the
// dashboard's developers to copy: a plain ES module, no dependencies, for any
// browser with fetch, Blob.slice and AbortController.
//
//   import { ChunkedUpload } from './chunked-upload.js';
//   const upload = new ChunkedUpload({ baseUrl: 'https://head1:8080', token, file });
//   upload.onProgress = (sent, total) => { ... };
//   const stored = await upload.start();      // the file object: file_id, sha256, ...
//
// Resuming: keep `upload.uploadId` (e.g. in localStorage) once `onUploadId` has
// been called; a new ChunkedUpload({ ..., uploadId }) asks the daemon which
// chunks it has (GET /api/v2/files/upload/{id}) and sends only the others.

const API = '/api/v2/files/upload';
// Statuses worth another try: the daemon restarting or busy, rate limits, a
// full disk being cleaned. Others are final, but for 409 upload_locked (a
// parallel writer holds the upload for a moment).
const RETRY_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504, 507]);

export class UploadError extends Error {
  constructor(message, { status = 0, code = 'network_error', body = null } = {}) {
    super(message);
    this.name = 'UploadError';
    this.status = status; // HTTP status, 0 when no answer arrived
    this.code = code;     // the daemon's "error" (e.g. token_expired, quota_exceeded)
    this.body = body;     // the daemon's JSON answer, when there was one
  }
}

export class ChunkedUpload {
  /**
   * @param {object} options
   * @param {string} options.baseUrl  the daemon, e.g. 'https://head1:8080' ('' for this origin)
   * @param {string|function(): (string|Promise<string>)} options.token  bearer token, or a
   *        function asked before each request (to hand out a refreshed one)
   * @param {Blob} options.file  the data (a File from an <input>, or any Blob)
   * @param {string} [options.filename]  defaults to file.name
   * @param {string} [options.jobId]  the dashboard's job id the file belongs to
   * @param {string} [options.sha256]  hex digest of the whole file, checked on completion
   * @param {number} [options.chunkSize]  bytes per chunk (the daemon may choose another)
   * @param {number} [options.parallel=3]  chunks in flight at once
   * @param {number[]} [options.retryDelays]  ms to wait before each retry of a chunk
   * @param {string} [options.uploadId]  resume this upload instead of starting one
   * @param {AbortSignal} [options.signal]  stops the upload (it stays resumable)
   */
  constructor(options) {
    this.options = { parallel: 3, retryDelays: [0, 1000, 2000, 4000, 8000, 8000], ...options };
    this.file = options.file;
    this.filename = options.filename ?? options.file.name;
    this.uploadId = options.uploadId ?? null;
    this.onUploadId = () => {};
    this.onProgress = () => {};
    this.chunksSent = 0; // chunks this object sent (a resumed upload sends fewer)
  }

  /** Uploads every missing chunk, completes, and resolves to the stored file. */
  async start() {
    const state = this.uploadId ? await this.#status() : await this.#init();
    this.chunkSize = state.chunk_size;
    this.totalChunks = state.total_chunks;
    for (let round = 0; ; round++) {
      await this.#sendMissing(new Set(state.received_chunks));
      try {
        return await this.#request('POST', `${API}/complete`, { upload_id: this.uploadId });
      } catch (error) {
        // Chunks lost on the way (e.g. to a head that went away): fetch the state, send again.
        if (error.code !== 'missing_chunks' || round >= 3) throw error;
        Object.assign(state, await this.#status());
      }
    }
  }

  /** Gives the upload up on the daemon too (its partial data is removed). */
  async cancel() {
    if (this.uploadId) await this.#request('DELETE', `${API}/${encodeURIComponent(this.uploadId)}`);
  }

  async #init() {
    const body = { filename: this.filename, size: this.file.size };
    if (this.options.jobId) body.job_id = this.options.jobId;
    if (this.options.sha256) body.sha256 = this.options.sha256;
    if (this.options.chunkSize) body.chunk_size = this.options.chunkSize;
    const state = await this.#request('POST', `${API}/init`, body);
    this.uploadId = state.upload_id;
    this.onUploadId(this.uploadId);
    return state;
  }

  #status() {
    return this.#request('GET', `${API}/${encodeURIComponent(this.uploadId)}`);
  }

  async #sendMissing(received) {
    const missing = [];
    for (let index = 0; index < this.totalChunks; index++) {
      if (!received.has(index)) missing.push(index);
    }
    let sent = received.size;
    this.onProgress(Math.min(sent * this.chunkSize, this.file.size), this.file.size);
    const worker = async () => {
      while (missing.length) {
        const index = missing.shift();
        await this.#sendChunk(index);
        sent += 1;
        this.onProgress(Math.min(sent * this.chunkSize, this.file.size), this.file.size);
      }
    };
    const workers = Array.from({ length: Math.max(1, this.options.parallel) }, worker);
    await Promise.all(workers);
  }

  async #sendChunk(index) {
    const start = index * this.chunkSize;
    const blob = this.file.slice(start, Math.min(start + this.chunkSize, this.file.size));
    const delays = this.options.retryDelays;
    for (let attempt = 0; ; attempt++) {
      // Fields before the file part: the daemon then writes the chunk as it reads it.
      const form = new FormData();
      form.append('upload_id', this.uploadId);
      form.append('chunk_index', String(index));
      form.append('chunk', blob, 'chunk');
      try {
        await this.#request('POST', `${API}/chunk`, form);
        this.chunksSent += 1;
        return;
      } catch (error) {
        const retry = error.status === 0 || RETRY_STATUSES.has(error.status)
          || error.code === 'upload_locked';
        if (!retry || attempt >= delays.length || this.options.signal?.aborted) throw error;
        await sleep(delays[attempt], this.options.signal);
      }
    }
  }

  async #request(method, path, body) {
    const token = typeof this.options.token === 'function'
      ? await this.options.token() : this.options.token;
    const headers = { Authorization: `Bearer ${token}` };
    const init = { method, headers, signal: this.options.signal };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let answer;
    try {
      answer = await fetch(`${this.options.baseUrl ?? ''}${path}`, init);
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new UploadError(`${method} ${path}: ${error.message}`); // offline, refused, CORS
    }
    if (answer.status === 204) return null;
    const text = await answer.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON: a proxy's page */ }
    if (!answer.ok) {
      throw new UploadError(json?.message ?? `${method} ${path}: HTTP ${answer.status}`,
        { status: answer.status, code: json?.error ?? 'http_error', body: json });
    }
    return json;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason ?? new DOMException('Aborted', 'AbortError'));
    }, { once: true });
  });
}
