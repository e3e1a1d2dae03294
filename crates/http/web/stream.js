// The answer stream: Server-Sent Events read from a fetch body, and the
// delta-v1 applier (docs/api.md, "The stream (delta encoding v1)").

/**
 * Reads the events of an event-stream response, calling `onEvent({id,
 * event, data})` for each, until the body ends. Comments (keep-alives)
 * are skipped. Throws when the connection breaks.
 * @param {Response} res
 * @param {(e: {id: string|null, event: string, data: string}) => void} onEvent
 */
export async function readEvents(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let id = null;
  let event = 'message';
  let data = [];
  const line = (text) => {
    if (text === '') {
      if (data.length > 0) onEvent({ id, event, data: data.join('\n') });
      id = null;
      event = 'message';
      data = [];
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id') id = value;
  };
  // A line may end in CR LF split across two chunks: a CR that ended the
  // last chunk makes a LF that starts the next one part of that ending.
  let afterCr = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    if (afterCr && buffer.startsWith('\n')) buffer = buffer.slice(1);
    afterCr = false;
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      if (buffer[end] === '\r' && end === buffer.length - 1) {
        afterCr = true;
        line(buffer.slice(0, end));
        buffer = '';
        break;
      }
      const sep = buffer[end] === '\r' && buffer[end + 1] === '\n' ? 2 : 1;
      line(buffer.slice(0, end));
      buffer = buffer.slice(end + sep);
    }
  }
}

/** A frame that does not fit the document. */
export class DeltaError extends Error {}

function tokens(pointer) {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new DeltaError(`bad path ${pointer}`);
  return pointer
    .slice(1)
    .split('/')
    .map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
}

function clone(value) {
  return value === undefined ? undefined : structuredClone(value);
}

/**
 * The delta-v1 applier, as `confab_domain::DeltaApplier`: a document built
 * from frames `{p, o, v}`. A frame without `p` or `o` inherits them from
 * the one before; one without either whose `v` is a list of operations is
 * a `patch`. A frame that does not fit changes nothing and throws.
 */
export class DeltaApplier {
  constructor() {
    this.document = null;
    this.path = null;
    this.op = null;
  }

  /** Applies one frame as it came in an event's data. */
  apply(frame) {
    const saved = [clone(this.document), this.path, this.op];
    try {
      this.step(frame);
    } catch (e) {
      [this.document, this.path, this.op] = saved;
      throw e;
    }
  }

  step(frame) {
    if (!isObject(frame) || !('v' in frame)) throw new DeltaError('malformed delta frame');
    if (frame.p !== undefined && typeof frame.p !== 'string') throw new DeltaError('malformed delta frame');
    if (frame.o !== undefined && !OPS.includes(frame.o)) throw new DeltaError('malformed delta frame');
    const impliedPatch = frame.o === undefined && frame.p === undefined && isOpList(frame.v);
    let op = frame.o;
    if (op === undefined) op = impliedPatch ? 'patch' : this.op;
    if (!op) throw new DeltaError('no operation');
    let path = frame.p;
    if (path === undefined) {
      path = (op === 'patch' || op === 'add') && (frame.o !== undefined || impliedPatch) ? '' : (this.path ?? '');
    }
    if (op === 'patch') {
      if (!Array.isArray(frame.v)) throw new DeltaError('a patch takes a list of operations');
      for (const inner of frame.v) this.step(inner);
      return;
    }
    this.applyOp(path, op, frame.v);
    this.path = path;
    this.op = op;
  }

  applyOp(path, op, v) {
    if (op === 'add' || op === 'replace') {
      this.set(path, clone(v));
      return;
    }
    const [parent, key] = this.locate(path);
    const target = key === null ? this.document : parent[key];
    let next;
    if (op === 'append') {
      if (typeof target === 'string' && typeof v === 'string') next = target + v;
      else if (Array.isArray(target)) next = [...target, clone(v)];
      else if (isObject(target) && isObject(v)) next = { ...target, ...clone(v) };
      else throw new DeltaError(`cannot append at ${path}`);
    } else if (op === 'truncate') {
      if (!Number.isInteger(v) || v < 0) throw new DeltaError('truncate takes a length');
      if (typeof target === 'string') next = Array.from(target).slice(0, v).join('');
      else if (Array.isArray(target)) next = target.slice(0, v);
      else throw new DeltaError(`cannot truncate at ${path}`);
    } else {
      throw new DeltaError(`unknown operation ${op}`);
    }
    if (key === null) this.document = next;
    else parent[key] = next;
  }

  /** The container of `path` and the key in it (`null`: the document). */
  locate(path) {
    const keys = tokens(path);
    if (keys.length === 0) return [null, null];
    let node = this.document;
    for (const key of keys.slice(0, -1)) {
      node = child(node, key, path);
    }
    const last = keys[keys.length - 1];
    child(node, last, path);
    return [node, Array.isArray(node) ? Number(last) : last];
  }

  set(path, value) {
    const keys = tokens(path);
    if (keys.length === 0) {
      this.document = value;
      return;
    }
    let node = this.document;
    for (const key of keys.slice(0, -1)) node = child(node, key, path);
    const last = keys[keys.length - 1];
    if (Array.isArray(node)) {
      if (last === '-') {
        node.push(value);
        return;
      }
      // As Rust's usize parse: digits, an optional leading '+'.
      const index = /^\+?\d+$/.test(last) ? Number(last) : -1;
      if (index < 0 || index > node.length) throw new DeltaError(`no ${path}`);
      node[index] = value;
    } else if (isObject(node)) {
      node[last] = value;
    } else {
      throw new DeltaError(`the parent of ${path} is not an object or array`);
    }
  }
}

const OPS = ['add', 'append', 'replace', 'truncate', 'patch'];

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function isOpList(v) {
  return Array.isArray(v) && v.length > 0 && v.every((i) => isObject(i) && ('o' in i || 'p' in i));
}

/** The member `key` of `node`, which must exist. */
function child(node, key, path) {
  if (Array.isArray(node)) {
    // As a JSON Pointer array index: no leading zero, no sign.
    const index = /^(0|[1-9]\d*)$/.test(key) ? Number(key) : -1;
    if (index < 0 || index >= node.length) throw new DeltaError(`no ${path}`);
    return node[index];
  }
  if (isObject(node) && Object.hasOwn(node, key)) return node[key];
  throw new DeltaError(`no ${path}`);
}
