// The chat page: sign-in, the conversation list, the thread, sending with
// the answer streamed in, stop, resume, edit, regenerate and branches.

import * as auth from '/assets/api.js';
import { api, ApiError } from '/assets/api.js';
import { readEvents, DeltaApplier } from '/assets/stream.js';
import { renderMarkdown } from '/assets/render.js';

const $ = (id) => document.getElementById(id);

/** Where the page is. */
const state = {
  /** The open conversation's id, or null for a new chat. */
  conversationId: null,
  /** The open conversation's messages (its current branch), oldest first. */
  messages: [],
  /** Sibling ids per message id (`siblings` of the history page). */
  siblings: {},
  /** The cursor of older messages, when there are. */
  cursor: null,
  /** The answer being streamed: {conversationId, controller, applier, token, lastEventId}. */
  running: null,
  /** The conversation list's paging. */
  list: { offset: 0, total: 0 },
  /** The models a send may name. */
  models: [],
};

// Where a running answer can be resumed after a reload: the conversation,
// its resume token (useless without the access token) and nothing else.
const PENDING = 'confab.pending';

// ---------- notices ----------

let noticeTimer = null;

/** Shows `text` above the composer; `seconds` counts down a wait. */
function notice(text, { seconds = null, kind = 'error' } = {}) {
  const box = $('notice');
  clearInterval(noticeTimer);
  box.className = `notice ${kind}`;
  box.hidden = false;
  if (seconds === null) {
    box.textContent = text;
    return;
  }
  let left = seconds;
  const tick = () => {
    box.textContent = text.replace('{s}', String(left));
    if (left <= 0) {
      clearInterval(noticeTimer);
      box.hidden = true;
    }
    left -= 1;
  };
  tick();
  noticeTimer = setInterval(tick, 1000);
}

function clearNotice() {
  clearInterval(noticeTimer);
  $('notice').hidden = true;
}

/** Tells the user what went wrong, in words that say what to do. */
function explain(error) {
  if (!(error instanceof ApiError)) {
    notice(`Something went wrong: ${error.message}`);
    return;
  }
  const wait = error.retryAfter ?? 5;
  switch (error.status) {
    case 0:
      notice('The connection to the server was lost. Check your network; the page retries when you act again.');
      break;
    case 401:
      notice('Your session has ended. Log in again.');
      break;
    case 429:
      notice(
        error.code === 'QUOTA_EXCEEDED'
          ? `${error.message} Try again in {s} s.`
          : 'Too many requests. Try again in {s} s.',
        { seconds: wait },
      );
      break;
    case 503:
      notice('The service is busy or starting up. Try again in {s} s.', { seconds: wait });
      break;
    default:
      notice(error.message + (error.requestId ? ` (request ${error.requestId})` : ''));
  }
}

// ---------- sign-in ----------

let registering = false;

function showAuth() {
  stopLocally();
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-username').focus();
}

function setAuthMode(register) {
  registering = register;
  $('tab-login').setAttribute('aria-selected', String(!register));
  $('tab-register').setAttribute('aria-selected', String(register));
  $('email-row').hidden = !register;
  $('auth-submit').textContent = register ? 'Create account' : 'Log in';
  $('auth-password').autocomplete = register ? 'new-password' : 'current-password';
}

async function submitAuth(event) {
  event.preventDefault();
  const username = $('auth-username').value.trim();
  const password = $('auth-password').value;
  const error = $('auth-error');
  error.hidden = true;
  $('auth-submit').disabled = true;
  try {
    if (registering) await auth.register(username, $('auth-email').value.trim(), password);
    await auth.login(username, password);
    $('auth-password').value = '';
    await enter();
  } catch (e) {
    error.hidden = false;
    if (e instanceof ApiError && e.status === 429) {
      error.textContent = `Too many attempts. Try again in ${e.retryAfter ?? 60} s.`;
    } else if (e instanceof ApiError && e.status === 401) {
      error.textContent = 'Wrong username or password.';
    } else {
      error.textContent = e.field ? `${e.field}: ${e.message}` : e.message;
    }
  } finally {
    $('auth-submit').disabled = false;
  }
}

/** Shows the app once signed in. */
async function enter() {
  $('auth').hidden = true;
  $('app').hidden = false;
  try {
    const me = await (await api('/api/v1/users/me')).json();
    $('whoami').textContent = me.username;
  } catch (e) {
    explain(e);
  }
  await Promise.all([loadModels(), loadList()]);
  const fromUrl = location.hash.match(/^#c\/([\w-]+)$/);
  if (fromUrl) await openConversation(fromUrl[1]);
  else newChat();
  $('prompt').focus();
}

// ---------- models ----------

async function loadModels() {
  const select = $('model');
  select.replaceChildren();
  try {
    const { items } = await (await api('/api/v1/models')).json();
    state.models = items;
    for (const m of items) {
      const option = new Option(m.state === 'ready' ? m.id : `${m.id} (${m.state})`, m.id);
      option.selected = m.default;
      select.append(option);
    }
  } catch (e) {
    explain(e);
  }
  select.parentElement.hidden = state.models.length < 2;
}

/** The model to name in a send: none when the default is picked. */
function chosenModel() {
  const picked = state.models.find((m) => m.id === $('model').value);
  return picked && !picked.default ? picked.id : undefined;
}

// ---------- the conversation list ----------

let searchTimer = null;

let listSeq = 0;
let openSeq = 0;

async function loadList({ more = false } = {}) {
  const seq = ++listSeq;
  const q = $('search').value.trim();
  const archived = $('show-archived').checked;
  const offset = more ? state.list.offset : 0;
  const params = new URLSearchParams({ limit: '30', offset: String(offset) });
  if (q) params.set('q', q);
  if (archived) params.set('archived', 'true');
  try {
    const page = await (await api(`/api/v1/conversations?${params}`)).json();
    // A later search or reload has been asked for: this answer is stale.
    if (seq !== listSeq) return;
    const ul = $('conversations');
    if (!more) ul.replaceChildren();
    for (const item of page.items) ul.append(listItem(item));
    state.list = { offset: offset + page.items.length, total: page.total };
    $('more-conversations').hidden = state.list.offset >= page.total;
    if (!more && page.items.length === 0) {
      const li = document.createElement('li');
      li.className = 'none';
      li.textContent = q ? 'No conversation matches.' : archived ? 'Nothing archived.' : 'No conversations yet.';
      ul.append(li);
    }
    markOpen();
  } catch (e) {
    explain(e);
  }
}

function listItem(item) {
  const li = document.createElement('li');
  li.dataset.id = item.id;
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'open';
  open.textContent = item.title;
  open.title = item.last_message ?? item.title;
  open.addEventListener('click', () => {
    openConversation(item.id);
    closeSidebarOnPhone();
  });
  const rename = smallButton('Rename', '\u270E', () => startRename(li, item));
  const archive = smallButton(item.is_archived ? 'Unarchive' : 'Archive', item.is_archived ? '\u21A9' : '\u2913', () =>
    setArchived(item.id, !item.is_archived),
  );
  const remove = smallButton('Delete', '\u2715', () => confirmDelete(item));
  remove.classList.add('danger');
  li.append(open, rename, archive, remove);
  return li;
}

function smallButton(label, glyph, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'icon small';
  b.textContent = glyph;
  b.title = label;
  b.setAttribute('aria-label', label);
  b.dataset.action = label.toLowerCase();
  b.addEventListener('click', (e) => {
    e.stopPropagation();
    action();
  });
  return b;
}

function markOpen() {
  for (const li of $('conversations').children) {
    li.classList.toggle('current', li.dataset.id === state.conversationId);
  }
}

function startRename(li, item) {
  const input = document.createElement('input');
  input.className = 'rename';
  input.value = item.title;
  input.maxLength = 200;
  input.setAttribute('aria-label', 'New title');
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== item.title) {
      try {
        await api(`/api/v1/conversations/${item.id}`, { method: 'PATCH', body: { title } });
        if (item.id === state.conversationId) $('chat-title').textContent = title;
      } catch (e) {
        explain(e);
      }
    }
    await loadList();
  };
  input.addEventListener('keydown', (e) => {
    if (e.isComposing) return;
    if (e.key === 'Enter') finish(true);
    if (e.key === 'Escape') {
      e.preventDefault();
      finish(false);
    }
  });
  input.addEventListener('blur', () => finish(true));
}

async function setArchived(id, archived) {
  try {
    await api(`/api/v1/conversations/${id}`, { method: 'PATCH', body: { is_archived: archived } });
    await loadList();
  } catch (e) {
    explain(e);
  }
}

function confirmDelete(item) {
  const dialog = $('confirm');
  $('confirm-text').textContent = `Delete "${item.title}"? This cannot be undone.`;
  dialog.returnValue = '';
  // However the dialog closes (a button, Esc), this choice ends with it.
  dialog.addEventListener(
    'close',
    async () => {
      if (dialog.returnValue !== 'ok') return;
      try {
        await api(`/api/v1/conversations/${item.id}`, { method: 'DELETE' });
        if (item.id === state.conversationId) newChat();
        await loadList();
      } catch (e) {
        explain(e);
      }
    },
    { once: true },
  );
  dialog.showModal();
  $('confirm-cancel').focus();
}

// ---------- the thread ----------

function newChat() {
  if (state.running) return;
  state.conversationId = null;
  state.messages = [];
  state.siblings = {};
  state.cursor = null;
  history.replaceState(null, '', location.pathname);
  $('chat-title').textContent = 'New chat';
  renderThread();
  markOpen();
  clearNotice();
  $('prompt').focus();
}

/** Opens a conversation: its newest messages, then its answer if one runs. */
async function openConversation(id) {
  if (state.running && state.running.conversationId !== id) stopLocally();
  const seq = ++openSeq;
  try {
    const page = await (await api(`/api/v1/conversations/${id}?limit=100`)).json();
    // Another conversation has been opened since: this one is not shown.
    if (seq !== openSeq) return;
    state.conversationId = id;
    state.messages = page.messages;
    state.siblings = page.siblings ?? {};
    state.cursor = page.has_more ? page.cursor : null;
    $('chat-title').textContent = page.title;
    history.replaceState(null, '', `#c/${id}`);
    renderThread();
    markOpen();
    clearNotice();
    const token = readPending(id);
    const last = page.messages[page.messages.length - 1];
    if (token && !state.running) {
      // Back to an answer this tab started (after a reload, or from
      // another conversation): replay its whole stream into the message.
      await resume(token, null);
    } else if (last?.status === 'in_progress' && !state.running) {
      notice('An answer is still being written in another window. Reopen the conversation to see it.', {
        kind: 'info',
      });
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      notice('That conversation does not exist any more.');
      newChat();
      await loadList();
      return;
    }
    explain(e);
  }
}

async function loadOlder() {
  if (!state.cursor || !state.conversationId) return;
  try {
    const params = new URLSearchParams({ limit: '100', before: state.cursor });
    const page = await (await api(`/api/v1/conversations/${state.conversationId}?${params}`)).json();
    state.messages = [...page.messages, ...state.messages];
    Object.assign(state.siblings, page.siblings ?? {});
    state.cursor = page.has_more ? page.cursor : null;
    renderThread({ keepScroll: true });
  } catch (e) {
    explain(e);
  }
}

function renderThread({ keepScroll = false } = {}) {
  const box = $('messages');
  const fromBottom = box.scrollHeight - box.scrollTop;
  const thread = $('thread');
  thread.replaceChildren(...state.messages.filter(shown).map(messageElement));
  $('empty').hidden = state.messages.length > 0;
  $('older').hidden = !state.cursor;
  if (keepScroll) box.scrollTop = box.scrollHeight - fromBottom;
  else box.scrollTop = box.scrollHeight;
}

function shown(message) {
  const role = message.author?.role ?? message.role;
  return role === 'user' || role === 'assistant';
}

function textOf(message) {
  return (message.content?.parts ?? []).filter((p) => typeof p === 'string').join('');
}

function messageElement(message) {
  const role = message.author?.role ?? message.role;
  const article = document.createElement('article');
  article.className = `message ${role}`;
  article.dataset.id = message.id;
  const body = document.createElement('div');
  body.className = 'body';
  article.append(body);
  const foot = document.createElement('div');
  foot.className = 'foot';
  article.append(foot);
  fillMessage(article, message);
  return article;
}

/** Puts `message`'s text, status and actions into its element. */
function fillMessage(article, message) {
  const role = message.author?.role ?? message.role;
  const body = article.querySelector('.body');
  const text = textOf(message);
  if (role === 'assistant') {
    body.replaceChildren(renderMarkdown(text));
    if (message.status === 'in_progress' && text === '') body.append(typing());
  } else {
    body.textContent = text;
  }
  article.dataset.status = message.status ?? '';
  const foot = article.querySelector('.foot');
  foot.replaceChildren();
  const siblings = state.siblings[message.id];
  if (siblings && siblings.ids.length > 1) foot.append(switcher(message, siblings));
  const status = {
    finished_partial_completion: 'Stopped',
    failed: 'The answer failed',
    in_progress: '',
  }[message.status];
  if (role === 'assistant' && status) {
    const s = document.createElement('span');
    s.className = 'status';
    s.textContent = status;
    foot.append(s);
  }
  const busy = state.running !== null;
  if (role === 'user' && !busy) {
    foot.append(textButton('Edit', () => startEdit(article, message)));
  }
  if (role === 'assistant' && !busy && message.status !== 'in_progress') {
    foot.append(textButton('Regenerate', () => regenerate(message)));
    if (message.status === 'finished_partial_completion') {
      foot.append(textButton('Continue', () => continueAnswer(message)));
    }
    foot.append(textButton('Copy', () => navigator.clipboard?.writeText(text)));
  }
}

function typing() {
  const dots = document.createElement('span');
  dots.className = 'typing';
  dots.setAttribute('aria-label', 'Writing');
  return dots;
}

function textButton(label, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'link';
  b.textContent = label;
  b.dataset.action = label.toLowerCase();
  b.addEventListener('click', action);
  return b;
}

/** "< 2/3 >": the message's place among its siblings, and the way to the others. */
function switcher(message, siblings) {
  const nav = document.createElement('span');
  nav.className = 'switcher';
  const prev = textButton('\u2039', () => switchTo(siblings.ids[siblings.index - 1]));
  prev.setAttribute('aria-label', 'Previous version');
  prev.dataset.action = 'previous';
  prev.disabled = siblings.index === 0 || state.running !== null;
  const next = textButton('\u203A', () => switchTo(siblings.ids[siblings.index + 1]));
  next.setAttribute('aria-label', 'Next version');
  next.dataset.action = 'next';
  next.disabled = siblings.index === siblings.ids.length - 1 || state.running !== null;
  const place = document.createElement('span');
  place.className = 'place';
  place.textContent = `${siblings.index + 1}/${siblings.ids.length}`;
  nav.append(prev, place, next);
  return nav;
}

/** Shows the branch through `id`: down from it along its newest children. */
async function switchTo(id) {
  if (!id || !state.conversationId) return;
  try {
    const children = new Map();
    let after = null;
    for (;;) {
      const params = new URLSearchParams({ limit: '500' });
      if (after) params.set('after', after);
      const page = await (await api(`/api/v1/conversations/${state.conversationId}/tree?${params}`)).json();
      for (const node of page.nodes) children.set(node.id, node.children);
      if (!page.has_more) break;
      after = page.cursor;
    }
    let leaf = id;
    for (let kids = children.get(leaf); kids && kids.length > 0; kids = children.get(leaf)) {
      leaf = kids[kids.length - 1];
    }
    await api(`/api/v1/conversations/${state.conversationId}`, { method: 'PATCH', body: { current_node: leaf } });
    await openConversation(state.conversationId);
  } catch (e) {
    explain(e);
  }
}

function startEdit(article, message) {
  const body = article.querySelector('.body');
  const area = document.createElement('textarea');
  area.className = 'edit';
  area.value = textOf(message);
  area.setAttribute('aria-label', 'Edited message');
  const save = textButton('Save & submit', () => {
    const text = area.value.trim();
    if (!text) return;
    const parent = message.metadata?.parent_id ?? 'client-created-root';
    send(text, { parent });
  });
  const cancel = textButton('Cancel', () => renderThread());
  body.replaceChildren(area);
  article.querySelector('.foot').replaceChildren(save, cancel);
  area.addEventListener('keydown', (e) => {
    if (e.isComposing) return;
    if (e.key === 'Escape') {
      e.preventDefault();
      renderThread();
    }
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      save.click();
    }
  });
  area.focus();
}

function regenerate(message) {
  send(null, { action: 'variant', parent: message.metadata?.parent_id });
}

function continueAnswer(message) {
  send(null, { action: 'continue', parent: message.id });
}

// ---------- sending and streaming ----------

/**
 * Sends `text` (or, with `action`, regenerates or continues) and streams
 * the answer in.
 */
async function send(text, { parent = undefined, action = 'next' } = {}) {
  if (state.running) return;
  clearNotice();
  const body = {};
  if (action !== 'next') body.action = action;
  if (text !== null) {
    body.messages = [{ id: newId(), role: 'user', content: { content_type: 'text', parts: [text] } }];
  }
  if (parent) body.parent_message_id = parent;
  const model = chosenModel();
  if (model) body.model = model;
  const path = state.conversationId
    ? `/api/v1/conversations/${state.conversationId}/messages`
    : '/api/v1/conversations';
  const controller = new AbortController();
  const running = {
    conversationId: state.conversationId,
    controller,
    applier: new DeltaApplier(),
    token: null,
    lastEventId: null,
    idempotencyKey: newId(),
    request: { path, body },
    resends: 0,
    ended: false,
  };
  state.running = running;
  setBusy(true);
  if (text !== null && action === 'next') showQuestion(text, parent);
  if (action === 'variant') showOnlyUpTo(parent);
  try {
    await post(running);
  } catch (e) {
    if (e.name === 'AbortError') return;
    if (state.running === running) finish(running);
    // The thread as stored (without the question that was not sent), then
    // what went wrong.
    if (!running.conversationId) {
      state.messages = state.messages.filter((m) => m.id !== 'pending-question');
      renderThread();
    } else {
      await openConversation(running.conversationId);
    }
    // Nothing typed is lost: a question that was not sent goes back into
    // the composer.
    if (text !== null && action === 'next' && parent === undefined && !$('prompt').value) {
      $('prompt').value = text;
      growPrompt();
    }
    explain(e);
  }
}

/**
 * Sends the running answer's request (again, after a connection lost before
 * its resume token came: the same `Idempotency-Key` makes the server replay
 * that send's stream from its first event, never store a second message),
 * and follows its stream.
 */
async function post(running) {
  for (;;) {
    try {
      const res = await api(running.request.path, {
        method: 'POST',
        body: running.request.body,
        headers: { accept: 'text/event-stream', 'idempotency-key': running.idempotencyKey },
        signal: running.controller.signal,
      });
      // A replay starts from the first event: build the answer afresh.
      running.applier = new DeltaApplier();
      await follow(res, running);
      return;
    } catch (e) {
      // Lost before any answer, or the first attempt still running (409):
      // the same request again, a few times, a little later each time.
      const again =
        e instanceof ApiError && (e.status === 0 || (e.status === 409 && running.resends > 0));
      if (!again || running.resends >= 5 || state.running !== running) throw e;
      running.resends += 1;
      notice('The connection was lost. Reconnecting…', { kind: 'info' });
      await sleep(500 * 2 ** (running.resends - 1));
    }
  }
}

/** Shows the thread down to `question` only (a regeneration's new answer goes under it). */
function showOnlyUpTo(question) {
  const at = state.messages.findIndex((m) => m.id === question);
  if (at >= 0) {
    state.messages = state.messages.slice(0, at + 1);
    renderThread();
  }
}

/** A fresh id for a message or an idempotency key. */
function newId() {
  return crypto.randomUUID().replaceAll('-', '');
}

/** Shows the sent question at once, where the server will put it. */
function showQuestion(text, parent) {
  if (parent !== undefined) {
    // An edit: the thread ends at the edited question's parent now.
    const at = parent === 'client-created-root' ? 0 : state.messages.findIndex((m) => m.id === parent) + 1;
    state.messages = state.messages.slice(0, at);
  }
  state.messages.push({ id: 'pending-question', author: { role: 'user' }, content: { parts: [text] } });
  renderThread();
}

/** Applies the events of one response to the running answer. */
async function follow(res, running) {
  try {
    await readEvents(res, (e) => onEvent(e, running));
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    // The connection broke mid-answer.
    running.interrupted = true;
  }
  if (state.running !== running) return;
  if (!running.token) {
    // Broken before the answer could be named: the send again, with its key.
    if (running.request && running.resends < 5) {
      running.resends += 1;
      notice('The connection was lost. Reconnecting…', { kind: 'info' });
      await sleep(500 * 2 ** (running.resends - 1));
      if (state.running === running) await post(running);
      return;
    }
    finish(running);
    notice('The connection was lost before the answer started. Check the conversation list.');
    await loadList();
    return;
  }
  if (!running.ended || running.interrupted) {
    await reconnect(running);
    return;
  }
  await done(running);
}

/** One event of the running answer's stream. */
function onEvent(e, running) {
  if (state.running !== running) return;
  if (running.reconnecting) {
    running.reconnecting = false;
    clearNotice();
  }
  if (e.id) running.lastEventId = e.id;
  if (e.data === '[DONE]') {
    running.ended = true;
    return;
  }
  if (e.event === 'delta_encoding') return;
  let data;
  try {
    data = JSON.parse(e.data);
  } catch {
    return;
  }
  if (e.event === 'delta') {
    try {
      running.applier.apply(data);
    } catch (err) {
      // A frame that does not fit changes nothing; the stored answer is
      // read when the stream ends.
      console.warn('delta skipped', err);
    }
    showAnswer(running);
    return;
  }
  switch (data.type) {
    case 'resume_conversation_token':
      running.token = data.token;
      running.conversationId = data.conversation_id;
      if (!state.conversationId) {
        state.conversationId = data.conversation_id;
        history.replaceState(null, '', `#c/${data.conversation_id}`);
      }
      writePending(data.conversation_id, data.token);
      break;
    case 'input_message':
      showStoredQuestion(data.input_message);
      break;
    case 'title_generation':
      $('chat-title').textContent = data.title;
      loadList();
      break;
    case 'error':
      if (data.error?.code === 'UNAVAILABLE' && running.applier.document?.message?.status === 'in_progress') {
        // The stream broke off on the server's side; the answer goes on.
        running.interrupted = true;
      } else {
        running.failure = data.error?.message ?? 'The answer failed.';
        notice(running.failure);
      }
      break;
    default:
      break;
  }
}

/** Replaces the placeholder question with the stored one. */
function showStoredQuestion(message) {
  const at = state.messages.findIndex((m) => m.id === 'pending-question');
  if (at >= 0) state.messages[at] = message;
  else if (!state.messages.some((m) => m.id === message.id)) state.messages.push(message);
}

/** Puts the answer as built so far on the page (once per frame). */
function showAnswer(running) {
  if (running.frame) return;
  running.frame = requestAnimationFrame(() => {
    running.frame = null;
    // Only the answer being followed, in the conversation on screen.
    if (state.running !== running || state.conversationId !== running.conversationId) return;
    const message = running.applier.document?.message;
    if (!message) return;
    const at = state.messages.findIndex((m) => m.id === message.id);
    if (at >= 0) state.messages[at] = message;
    else state.messages.push(message);
    const box = $('messages');
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    let article = $('thread').querySelector(`article[data-id="${CSS.escape(message.id)}"]`);
    if (!article) {
      renderThread();
    } else {
      fillMessage(article, message);
    }
    $('empty').hidden = true;
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
}

/** Follows the answer again after the connection broke, from the last event. */
async function reconnect(running) {
  for (let attempt = 1; attempt <= 8 && state.running === running; attempt += 1) {
    notice('The connection was lost. Reconnecting…', { kind: 'info' });
    await sleep(Math.min(500 * 2 ** (attempt - 1), 8000));
    if (state.running !== running) return;
    try {
      const res = await openStream(running.conversationId, running.token, running.lastEventId, running.controller.signal);
      running.interrupted = false;
      // The notice goes with the first event that comes again.
      running.reconnecting = true;
      await follow(res, running);
      return;
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e instanceof ApiError && [403, 404, 422].includes(e.status)) {
        // The stream is no longer kept (or its token has expired): the
        // stored answer is the truth.
        finish(running);
        await openConversation(running.conversationId);
        return;
      }
      if (!(e instanceof ApiError) || (e.status !== 0 && e.status !== 429 && e.status !== 503)) {
        finish(running);
        explain(e);
        return;
      }
    }
  }
  if (state.running === running) {
    finish(running);
    notice('The connection to the server was lost. Reload the page to see the answer.');
  }
}

function openStream(conversationId, token, lastEventId, signal) {
  const headers = { accept: 'text/event-stream', 'x-resume-token': token };
  if (lastEventId) headers['last-event-id'] = lastEventId;
  return api(`/api/v1/conversations/${conversationId}/stream`, { headers, signal });
}

/** After a reload mid-answer: the whole stream again, into a fresh document. */
async function resume(token, lastEventId) {
  const running = {
    conversationId: state.conversationId,
    controller: new AbortController(),
    applier: new DeltaApplier(),
    token,
    lastEventId,
    ended: false,
  };
  state.running = running;
  setBusy(true);
  try {
    const res = await openStream(running.conversationId, token, lastEventId, running.controller.signal);
    await follow(res, running);
  } catch (e) {
    if (e.name === 'AbortError') return;
    finish(running);
    if (e instanceof ApiError && (e.status === 404 || e.status === 403 || e.status === 422)) {
      // The answer's stream has gone: what is stored is all there is.
      await openConversation(running.conversationId);
      return;
    }
    explain(e);
  }
}

/** The answer ended: the stored conversation is read again. */
async function done(running) {
  finish(running);
  const id = running.conversationId;
  if (state.conversationId === id) await openConversation(id);
  if (running.failure) notice(running.failure);
  await loadList();
}

function finish(running, { keepPending = false } = {}) {
  if (state.running !== running) return;
  state.running = null;
  if (!keepPending && running.conversationId) clearPending(running.conversationId);
  setBusy(false);
}

/**
 * Stops following the running answer here (it goes on on the server); its
 * resume token is kept, so reopening its conversation follows it again.
 */
function stopLocally() {
  const running = state.running;
  if (!running) return;
  running.controller.abort();
  finish(running, { keepPending: true });
}

/** Stops the running answer: the server saves it as it is. */
async function stop() {
  const running = state.running;
  if (!running?.conversationId) return;
  $('stop').disabled = true;
  try {
    await api(`/api/v1/conversations/${running.conversationId}/stream`, { method: 'DELETE' });
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) explain(e);
  } finally {
    $('stop').disabled = false;
  }
}

function setBusy(busy) {
  $('send').hidden = busy;
  $('stop').hidden = !busy;
  $('new-chat').disabled = busy;
  document.body.classList.toggle('busy', busy);
}

/** The resume tokens of answers this tab started and has not seen end. */
function pendingTokens() {
  try {
    const all = JSON.parse(sessionStorage.getItem(PENDING) ?? '{}');
    return all && typeof all === 'object' && !Array.isArray(all) ? all : {};
  } catch {
    return {};
  }
}

function readPending(conversationId) {
  return pendingTokens()[conversationId] ?? null;
}

function writePending(conversationId, token) {
  const all = pendingTokens();
  all[conversationId] = token;
  sessionStorage.setItem(PENDING, JSON.stringify(all));
}

function clearPending(conversationId) {
  const all = pendingTokens();
  delete all[conversationId];
  sessionStorage.setItem(PENDING, JSON.stringify(all));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------- layout, theme, keyboard ----------

const NARROW = matchMedia('(max-width: 720px)');

/** On a phone the closed drawer is out of reach of Tab too. */
function syncDrawer() {
  $('sidebar').inert = NARROW.matches && !document.body.classList.contains('sidebar-open');
}

function openSidebar() {
  document.body.classList.add('sidebar-open');
  syncDrawer();
  $('search').focus();
}

function closeSidebarOnPhone() {
  document.body.classList.remove('sidebar-open');
  syncDrawer();
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
}

function toggleTheme() {
  const dark =
    document.documentElement.dataset.theme === 'dark' ||
    (!document.documentElement.dataset.theme && matchMedia('(prefers-color-scheme: dark)').matches);
  const theme = dark ? 'light' : 'dark';
  localStorage.setItem('confab.theme', theme);
  applyTheme(theme);
}

function growPrompt() {
  const prompt = $('prompt');
  prompt.style.height = 'auto';
  prompt.style.height = `${Math.min(prompt.scrollHeight + 2, 240)}px`;
  prompt.style.overflowY = prompt.scrollHeight > 240 ? 'auto' : 'hidden';
}

function wire() {
  const theme = localStorage.getItem('confab.theme');
  if (theme) applyTheme(theme);
  $('tab-login').addEventListener('click', () => setAuthMode(false));
  $('tab-register').addEventListener('click', () => setAuthMode(true));
  $('auth-form').addEventListener('submit', submitAuth);
  $('new-chat').addEventListener('click', () => {
    newChat();
    closeSidebarOnPhone();
  });
  $('search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadList(), 250);
  });
  $('show-archived').addEventListener('change', () => loadList());
  $('more-conversations').addEventListener('click', () => loadList({ more: true }));
  $('older').addEventListener('click', loadOlder);
  $('logout').addEventListener('click', async () => {
    try {
      await auth.logout();
    } catch {
      // Signed out here whatever the server said.
    }
    sessionStorage.removeItem(PENDING);
    showAuth();
  });
  $('theme').addEventListener('click', toggleTheme);
  $('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));
  $('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));
  $('open-sidebar').addEventListener('click', openSidebar);
  NARROW.addEventListener('change', syncDrawer);
  syncDrawer();
  $('close-sidebar').addEventListener('click', closeSidebarOnPhone);
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('prompt').value.trim();
    if (!text || state.running) return;
    $('prompt').value = '';
    growPrompt();
    send(text);
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('prompt').addEventListener('input', growPrompt);
  $('stop').addEventListener('click', stop);
  document.addEventListener('keydown', (e) => {
    const inField =
      e.target instanceof HTMLInputElement || (e.target instanceof HTMLTextAreaElement && e.target.id !== 'prompt');
    if (e.key === 'Escape' && state.running && !$('confirm').open && !e.defaultPrevented && !inField) stop();
    if (e.key.toLowerCase() === 'o' && e.ctrlKey && e.shiftKey) {
      e.preventDefault();
      newChat();
    }
  });
  auth.whenSignedOut(() => {
    showAuth();
    const error = $('auth-error');
    error.textContent = 'Your session has ended. Log in again.';
    error.hidden = false;
  });
}

async function start() {
  wire();
  try {
    if (await auth.refresh()) {
      await enter();
      return;
    }
    showAuth();
  } catch (e) {
    // No answer, or the server is busy: say so on the sign-in form.
    showAuth();
    const error = $('auth-error');
    error.textContent =
      e instanceof ApiError && e.status !== 0
        ? `The server can't sign you in right now (${e.message}). Reload to try again.`
        : 'The server can\'t be reached. Reload the page to try again.';
    error.hidden = false;
  }
}

start();
