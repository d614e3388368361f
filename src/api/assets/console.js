// The web console's script (served as /assets/console.js; the page's CSP allows no inline
// script). Answers are Markdown: marked renders them, DOMPurify strips anything that could run,
// highlight.js colours code blocks; all three are vendored beside this file.
"use strict";
const $ = (id) => document.getElementById(id);
const state = {
  key: localStorage.getItem("cah_key") || "",
  me: null,
  user: localStorage.getItem("cah_user") || "", // whose sessions (admin / open mode)
  session: null,
  source: null,
  turn: null, // the assistant bubble being streamed
  cwd: "",
  busy: false, // a turn runs: the mode selector picks steer or queue
  steers: new Map(), // steered message id → its note in the running turn's bubble
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const money = (usd, digits = 4) => "$" + (usd || 0).toFixed(digits);

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + state.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const err = data && data.error;
    const e = new Error(err ? err.message + " (" + err.code + ")" : res.status + " " + res.statusText);
    e.code = err && err.code;
    throw e;
  }
  return data;
}

// ---- Markdown ----------------------------------------------------------------------------

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // Links leave the console in a new tab, without access to it.
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/// Renders `text` as sanitised Markdown into `target`, code blocks highlighted.
function renderMarkdown(target, text) {
  const html = marked.parse(text || "", { async: false, gfm: true });
  target.innerHTML = DOMPurify.sanitize(html);
  for (const code of target.querySelectorAll("pre code")) hljs.highlightElement(code);
}

// A streamed answer is re-rendered at most once per frame, not once per delta.
function scheduleRender(segment) {
  if (segment.scheduled) return;
  segment.scheduled = true;
  requestAnimationFrame(() => {
    segment.scheduled = false;
    renderMarkdown(segment.el, segment.raw);
    stickToBottom();
  });
}

// ---- Log in, users -----------------------------------------------------------------------

async function login() {
  state.key = $("key").value.trim() || state.key;
  try {
    state.me = await api("GET", "/api/v1/me");
  } catch (e) {
    $("login-error").textContent = "Cannot log in: " + e.message;
    return;
  }
  localStorage.setItem("cah_key", state.key);
  const me = state.me;
  $("who").textContent = me.user_id ? "user " + me.user_id : me.role === "admin" ? "admin" : "open (no keys)";
  $("login").style.display = "none";
  $("app").style.display = "grid";
  for (const id of ["logout", "nav-toggle", "side-toggle"]) $(id).hidden = false;
  if (me.role !== "user") {
    $("admin-box").hidden = false;
    await loadUsers();
  }
  await loadSessions();
  const last = localStorage.getItem("cah_session");
  if (last) selectSession(last).catch(() => localStorage.removeItem("cah_session"));
  else if (window.matchMedia("(max-width: 760px)").matches) document.body.classList.add("show-nav");
}

/// The admin's user picker, from `GET /users` (open mode has no user list: the ids of its sessions).
async function loadUsers(select) {
  let ids;
  if (state.me.role === "admin") {
    ids = (await api("GET", "/api/v1/users")).map((u) => u.user_id);
  } else {
    const sessions = await api("GET", "/api/v1/sessions?detail=true&limit=1000");
    ids = [...new Set(sessions.map((s) => s.user_id))];
  }
  if (select && !ids.includes(select)) ids.push(select);
  const picker = $("user-select");
  picker.replaceChildren();
  if (ids.length === 0) picker.append(new Option("no users yet: add one below", ""));
  for (const id of ids.sort()) picker.append(new Option(id, id));
  const wanted = select || state.user;
  state.user = ids.includes(wanted) ? wanted : ids[0] || "";
  picker.value = state.user;
  localStorage.setItem("cah_user", state.user);
}

async function createUser() {
  const userId = $("new-user").value.trim();
  const notice = $("user-notice");
  notice.replaceChildren();
  if (!userId) return;
  if (state.me.role === "open") {
    await loadUsers(userId); // no keys in open mode: a session simply names its user
  } else {
    let created;
    try { created = await api("POST", "/api/v1/users", { user_id: userId }); }
    catch (e) { notice.append(el("div", "error-banner", "Cannot add " + userId + ": " + e.message)); return; }
    const box = el("div", "notice", "Key for " + created.user_id + " (shown only now): ");
    box.append(el("code", "", created.api_key));
    notice.append(box);
    await loadUsers(created.user_id);
  }
  $("new-user").value = "";
  await loadSessions();
}

// ---- Sessions ----------------------------------------------------------------------------

function sessionsPath() {
  const forUser = state.me.role !== "user" && state.user ? "&user_id=" + encodeURIComponent(state.user) : "";
  return "/api/v1/sessions?detail=true&limit=1000" + forUser;
}

async function loadSessions() {
  const sessions = await api("GET", sessionsPath());
  const list = $("sessions");
  list.replaceChildren();
  for (const s of sessions) {
    const item = el("div", "session" + (state.session && s.session_id === state.session.session_id ? " current" : ""));
    item.dataset.id = s.session_id;
    const mode = s.options.permission_mode ? " · " + s.options.permission_mode : "";
    item.append(el("span", "", s.subdir || "(home)"),
      el("small", "", s.status + " · " + s.message_count + " turns · " + money(s.total_cost_usd) + mode));
    item.onclick = () => selectSession(s.session_id);
    list.append(item);
  }
  // The sessions' own totals; the budget below counts every turn (purged sessions too).
  const whose = state.me.role === "user" ? state.me.user_id : state.user;
  const spent = sessions.reduce((sum, s) => sum + s.total_cost_usd, 0);
  $("spend").textContent = whose ? "Spend of " + whose + ": " + money(spent) + " over " + sessions.length + (sessions.length === 1 ? " session" : " sessions") : "";
  showBudget(whose);
  if (state.me.role === "admin") showUsageByUser();
}

/// The admin's table: this month's turns, tokens and cost by user (`GET /usage?group_by=user`).
async function showUsageByUser() {
  const table = $("usage-table");
  try {
    const rows = await api("GET", "/api/v1/usage?group_by=user");
    const body = table.querySelector("tbody");
    body.replaceChildren(...rows.map((r) => {
      const tr = el("tr", "");
      for (const cell of [r.user_id, String(r.turns), r.input_tokens + "/" + r.output_tokens, money(r.cost_usd)]) {
        tr.append(el("td", "", cell));
      }
      return tr;
    }));
    table.hidden = rows.length === 0;
  } catch (_) {
    table.hidden = true;
  }
}

/// The user's spend today and this month against their limits (`GET /users/{id}/budget`).
async function showBudget(whose) {
  const line = $("budget");
  if (!whose || state.me.role === "open") { line.textContent = ""; return; }
  try {
    const b = await api("GET", "/api/v1/users/" + encodeURIComponent(whose) + "/budget");
    const of = (spent, limit) => money(spent) + (limit == null ? " (no limit)" : " of " + money(limit));
    line.textContent = "Today " + of(b.spent_today_usd, b.daily_usd) + " · this month " + of(b.spent_this_month_usd, b.monthly_usd);
    line.classList.toggle("over", (b.daily_usd != null && b.spent_today_usd >= b.daily_usd) ||
      (b.monthly_usd != null && b.spent_this_month_usd >= b.monthly_usd));
  } catch (_) {
    line.textContent = "";
  }
}

function sessionOptions() {
  const options = {};
  if ($("mode").value) options.permission_mode = $("mode").value;
  if ($("model").value.trim()) options.model = $("model").value.trim();
  if ($("system-prompt").value.trim()) options.system_prompt = $("system-prompt").value;
  return options;
}

async function createSession() {
  const error = $("create-error");
  error.textContent = "";
  const body = { options: sessionOptions() };
  if ($("subdir").value.trim()) body.subdir = $("subdir").value.trim();
  if (state.me.role !== "user") {
    if (!state.user) { error.textContent = "Pick or add the user this session is for."; return; }
    body.user_id = state.user;
  }
  let s;
  try { s = await api("POST", "/api/v1/sessions", body); }
  catch (e) { error.textContent = "The server refused: " + e.message; return; }
  $("subdir").value = "";
  await loadSessions();
  await selectSession(s.session_id);
}

function showDetails(s) {
  const d = $("details");
  d.replaceChildren();
  const o = s.options || {};
  const rows = [["status", s.status], ["user", s.user_id], ["permission mode", o.permission_mode || "server default"],
    ["model", o.model || "server default"], ["turns", s.message_count], ["cost", money(s.total_cost_usd, 6)],
    ["tokens", s.usage.input_tokens + " in / " + s.usage.output_tokens + " out"], ["folder", s.cwd]];
  if (o.system_prompt) rows.splice(4, 0, ["system prompt", o.system_prompt.slice(0, 200)]);
  for (const [k, v] of rows) d.append(el("div", "", k + ": " + v));
}

const pendingKey = (id) => "cah_pending:" + id;

async function selectSession(id) {
  if (state.source) state.source.close();
  state.source = null;
  const s = await api("GET", "/api/v1/sessions/" + id);
  const history = await api("GET", "/api/v1/sessions/" + id + "/messages?limit=1000");
  state.session = s;
  state.turn = null;
  localStorage.setItem("cah_session", id);
  document.body.classList.remove("show-nav");
  showDetails(s);
  const transcript = $("transcript");
  transcript.replaceChildren();
  state.steers = new Map();
  for (const m of history) {
    if (m.role === "user") { transcript.append(withMenu(el("div", "msg user", m.text), m)); continue; }
    const bubble = withMenu(el("div", "msg assistant"), m);
    for (const call of m.tool_calls || []) bubble.append(toolFold(call.tool, call.input, call.output, call.is_error));
    const text = el("div", "md");
    renderMarkdown(text, m.text);
    bubble.append(text);
    if (m.cost_usd != null) bubble.append(el("div", "meta", money(m.cost_usd, 6)));
    transcript.append(bubble);
  }
  // A turn this browser started that history does not have yet (the page was reloaded while
  // it ran): show its message and replay its events from its start. Its `done` or `error`
  // forgets it. (The session's status and last_event_id are written lazily during a turn.)
  let after = s.last_event_id;
  const pending = JSON.parse(localStorage.getItem(pendingKey(id)) || "null");
  // A message sent just before the reload may not know its turn yet: it is stored when the
  // history's last user message is that text.
  const lastUser = history.filter((m) => m.role === "user").pop();
  // One whose request never arrived (the reload cancelled it) is forgotten after a minute.
  const running = pending && (pending.turn_id
    ? !history.some((m) => m.turn_id === pending.turn_id)
    : !(lastUser && lastUser.text === pending.text) && Date.now() - (pending.sent || 0) < 60000);
  if (running) {
    transcript.append(el("div", "msg user", pending.text));
    after = pending.after;
  } else {
    localStorage.removeItem(pendingKey(id));
  }
  setBusy(Boolean(running && pending.turn_id) || s.status === "busy");
  $("live-model").value = (s.options || {}).model || "";
  $("live-mode").value = "";
  $("live-error").textContent = "";
  $("live-notice").textContent = "";
  transcript.scrollTop = transcript.scrollHeight;
  await loadSessions();
  await loadFiles("");
  loadQueue();
  loadContext();
  follow(id, after);
}

// ---- Steer and queue, the context meter, live settings ------------------------------------

/// While a turn runs, Send needs a mode (steer it, or queue after it); idle, it starts a turn.
function setBusy(busy) {
  state.busy = busy;
  $("send-mode").disabled = !busy;
  if (!busy) $("send-mode").value = "";
  updateSend();
}

function updateSend() {
  $("send").disabled = state.busy && !$("send-mode").value;
}

/// The messages queued after the running turn, each with a Cancel button.
async function loadQueue() {
  if (!state.session) return;
  const id = state.session.session_id;
  const box = $("queue");
  let queued;
  try { queued = await api("GET", "/api/v1/sessions/" + id + "/queue"); }
  catch (_) { queued = []; }
  if (!state.session || state.session.session_id !== id) return;
  box.replaceChildren();
  if (queued.length) box.append(el("div", "meta", "Queued after this turn:"));
  for (const q of queued) {
    const row = el("div", "queued");
    row.dataset.id = q.message_id;
    const cancel = el("button", "danger", "Cancel");
    cancel.onclick = async () => {
      try { await api("DELETE", "/api/v1/sessions/" + id + "/queue/" + q.message_id); }
      catch (e) { row.append(el("span", "error-banner", e.message)); return; }
      loadQueue();
    };
    row.append(el("span", "", q.text), cancel);
    box.append(row);
  }
  box.hidden = queued.length === 0;
}

/// The note of a steered message in the running turn's bubble (made once, by the POST's
/// answer or by the event that says it was taken, whichever comes first).
function steerNote(messageId, text) {
  let note = state.steers.get(messageId);
  if (!note) {
    note = el("div", "steer-note pending", "↪ " + text);
    currentTurn().bubble.append(note);
    currentTurn().text = null; // what the agent says next goes below it
    state.steers.set(messageId, note);
  }
  return note;
}

async function sendWhileBusy(id, text, mode) {
  let answer;
  try { answer = await api("POST", "/api/v1/sessions/" + id + "/messages", { message: text, mode }); }
  catch (e) { $("transcript").append(el("div", "error-banner", e.message)); stickToBottom(); return; }
  $("message").value = "";
  if (answer.status === "steered") {
    steerNote(answer.message_id, text);
  } else if (answer.status === "queued") {
    loadQueue();
  } else {
    // The turn had ended meanwhile: this one started as an ordinary turn.
    state.turn = null;
    $("transcript").append(el("div", "msg user", text));
    setBusy(true);
  }
  stickToBottom();
}

/// How full the context window is (`GET /context`).
async function loadContext() {
  if (!state.session) return;
  const meter = $("context-meter");
  const line = $("context-text");
  try {
    const c = await api("GET", "/api/v1/sessions/" + state.session.session_id + "/context");
    meter.value = c.percent;
    line.textContent = c.used_tokens + " of " + c.window_tokens + " tokens (" + Math.round(c.percent) + "%)" +
      (c.model ? " · " + c.model : "");
  } catch (e) {
    meter.value = 0;
    line.textContent = e.code === "session_not_live" ? "No CLI runs for this session (send a message)." : e.message;
  }
}

/// Applies a new model or permission mode to the running CLI (`PATCH /sessions/{id}`).
async function applyLive() {
  if (!state.session) return;
  const body = {};
  const model = $("live-model").value.trim();
  if (model && model !== (state.session.options || {}).model) body.model = model;
  if ($("live-mode").value) body.permission_mode = $("live-mode").value;
  $("live-error").textContent = "";
  $("live-notice").textContent = "";
  if (!Object.keys(body).length) { $("live-notice").textContent = "Nothing to change."; return; }
  let s;
  try { s = await api("PATCH", "/api/v1/sessions/" + state.session.session_id, body); }
  catch (e) { $("live-error").textContent = "Not applied: " + e.message; return; }
  state.session = s;
  showDetails(s);
  $("live-mode").value = "";
  $("live-notice").textContent = "Applied.";
  loadContext();
}

// ---- Fork and rewind from a message's menu --------------------------------------------------

/// A stored message's "⋯" menu: fork the session from it, or (a user message) rewind to it.
function withMenu(bubble, message) {
  // Its label is drawn by CSS, so the message's own text stays the bubble's textContent.
  const button = el("button", "msg-menu-button");
  button.title = "Fork or rewind from this message";
  button.setAttribute("aria-label", "Message menu");
  button.onclick = () => {
    const open = bubble.querySelector(".msg-menu");
    if (open) { open.remove(); return; }
    bubble.append(messageMenu(message));
  };
  bubble.append(button);
  return bubble;
}

function messageMenu(message) {
  const menu = el("div", "msg-menu");
  const out = el("div", "meta");
  const fork = el("button", "", "Fork from here");
  fork.onclick = async () => {
    out.replaceChildren();
    let s;
    try { s = await api("POST", "/api/v1/sessions/" + state.session.session_id + "/fork", { at_message_id: message.id }); }
    catch (e) { out.append(el("div", "error-banner", "Cannot fork: " + e.message)); return; }
    await loadSessions();
    await selectSession(s.session_id);
  };
  menu.append(fork);
  if (message.role === "user") {
    const files = el("input");
    files.type = "checkbox";
    const label = el("label", "", "also restore files");
    label.prepend(files);
    const rewind = (dryRun) => async () => {
      out.replaceChildren();
      const id = state.session.session_id;
      let r;
      try { r = await api("POST", "/api/v1/sessions/" + id + "/rewind", { message_id: message.id, files: files.checked, dry_run: dryRun }); }
      catch (e) { out.append(el("div", "error-banner", "Cannot rewind: " + e.message)); return; }
      const changed = r.files.length ? r.files.join(", ") : "no files";
      if (dryRun) { out.append(el("div", "", "Would restore: " + changed)); return; }
      await selectSession(id);
      $("transcript").append(el("div", "meta rewound", "Rewound to before “" + message.text.slice(0, 60) + "”; restored " + changed + "."));
    };
    const preview = el("button", "", "Preview rewind");
    preview.onclick = rewind(true);
    const doIt = el("button", "danger", "Rewind to here");
    doIt.onclick = rewind(false);
    menu.append(preview, doIt, label);
  }
  menu.append(out);
  return menu;
}

// ---- The stream --------------------------------------------------------------------------

// EventSource reconnects by itself and sends Last-Event-ID, so no event is lost.
function follow(id, lastEventId) {
  const url = "/api/v1/sessions/" + id + "/events?last_event_id=" + lastEventId + "&access_token=" + encodeURIComponent(state.key);
  const source = new EventSource(url);
  state.source = source;
  state.lastEventId = lastEventId;
  source.onopen = () => { $("status").textContent = "Connected to session " + id.slice(0, 8) + "."; };
  source.onerror = () => { $("status").textContent = "Connection lost; reconnecting…"; };
  source.onmessage = (message) => {
    state.lastEventId = Number(message.lastEventId) || state.lastEventId;
    render(JSON.parse(message.data));
  };
}

function currentTurn() {
  if (!state.turn) {
    const bubble = el("div", "msg assistant");
    $("transcript").append(bubble);
    state.turn = { bubble, text: null, tools: new Map(), sawText: false };
  }
  return state.turn;
}

function stickToBottom() {
  const t = $("transcript");
  t.scrollTop = t.scrollHeight;
}

function appendText(turn, text) {
  if (!turn.text) {
    turn.text = { el: el("div", "md"), raw: "", scheduled: false };
    turn.bubble.append(turn.text.el);
  }
  turn.text.raw += text;
  turn.sawText = true;
  scheduleRender(turn.text);
}

function render(ev) {
  if (ev.type === "message_accepted") {
    if (state.steers.has(ev.message_id) || (state.turn && state.busy)) {
      // Steered into the running turn: the agent has it now.
      const note = steerNote(ev.message_id, ev.message);
      note.classList.remove("pending");
    } else {
      // A queued message's turn begins.
      state.turn = null;
      $("transcript").append(el("div", "msg user", ev.message));
      setBusy(true);
      loadQueue();
    }
    stickToBottom();
    return;
  }
  if (ev.type === "message_dropped") {
    const why = "not run (" + ev.reason + (ev.code ? ", " + ev.code : "") + "): " + (ev.error || "");
    const note = state.steers.get(ev.message_id);
    if (note) { note.classList.remove("pending"); note.classList.add("dropped"); note.after(el("div", "meta", why)); }
    else $("transcript").append(el("div", "meta dropped", "A queued message was " + why));
    loadQueue();
    stickToBottom();
    return;
  }
  const turn = currentTurn();
  if (ev.type === "text_delta") {
    appendText(turn, ev.text);
  } else if (ev.type === "tool_use") {
    const fold = toolFold(ev.tool_name, ev.tool_input);
    turn.tools.set(ev.tool_use_id, fold);
    turn.bubble.append(fold);
    turn.text = null; // text after the tool goes below it
  } else if (ev.type === "tool_result") {
    let fold = turn.tools.get(ev.tool_use_id);
    if (!fold) { fold = toolFold(ev.tool_name || "tool", {}); turn.bubble.append(fold); }
    setToolResult(fold, ev.output, ev.is_error);
  } else if (ev.type === "permission_request") {
    const card = permissionCard(ev);
    turn.bubble.append(card);
    turn.text = null;
    collapseIfAnswered(card, ev);
  } else if (ev.type === "done" || ev.type === "error") {
    if (ev.type === "done") {
      const r = ev.result;
      // The whole answer is `result.text` (the frame's own `text` is null for seed clients);
      // shown only when no delta was seen, e.g. a turn followed from its middle.
      if (!turn.sawText && r.text) appendText(turn, r.text);
      turn.bubble.append(el("div", "meta", r.subtype + " · " + money(r.cost_usd, 6) + " · " + r.usage.input_tokens + "/" +
        r.usage.output_tokens + " tokens · " + r.duration_ms + " ms"));
    } else {
      turn.bubble.append(el("div", "error-banner", ev.code + ": " + ev.error));
    }
    state.turn = null;
    if (state.session) localStorage.removeItem(pendingKey(state.session.session_id));
    setBusy(false);
    refreshSession();
    loadFiles(state.cwd);
    loadContext();
  }
  stickToBottom();
}

const brief = (v) => {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > 80 ? s.slice(0, 79) + "…" : s;
};

/// A tool call, folded: its name and the gist of its input; open for the input and result.
function toolFold(name, input, output, isError) {
  const fold = el("details", "tool");
  const summary = el("summary");
  input = input || {};
  const gist = input.command || input.file_path || input.path || input.pattern || input.url || JSON.stringify(input);
  summary.append(el("strong", "", "⚙ " + name), document.createTextNode(" " + brief(gist)), el("span", "mark"));
  fold.append(summary, el("div", "meta", "input"), el("pre", "input", JSON.stringify(input, null, 2)));
  if (output !== undefined && output !== null) setToolResult(fold, output, isError);
  return fold;
}

function setToolResult(fold, output, isError) {
  fold.classList.add(isError ? "error" : "ok");
  fold.querySelector(".mark").textContent = isError ? " ✗" : " ✓";
  const text = typeof output === "string" ? output : JSON.stringify(output, null, 2);
  fold.append(el("div", "meta", isError ? "error" : "result"), el("pre", "result", text));
}

/// A request replayed after a reload may have been answered already: then it shows as such.
async function collapseIfAnswered(card, ev) {
  let open;
  try { open = await api("GET", "/api/v1/sessions/" + state.session.session_id + "/permissions"); }
  catch (_) { return; }
  if (!card.classList.contains("permission")) return;
  if (open.some((r) => r.request_id === ev.request_id)) {
    card.dataset.open = "checked";
  } else {
    card.className = "meta answered";
    card.replaceChildren(ev.tool_name + ": answered");
  }
}

function permissionCard(ev) {
  const card = el("div", "permission");
  card.append(el("strong", "", "Allow " + ev.tool_name + "?"));
  const input = el("textarea");
  input.value = JSON.stringify(ev.tool_input, null, 2);
  const answer = async (behavior, always) => {
    const body = { behavior, always };
    if (behavior === "allow") {
      try { body.updated_input = JSON.parse(input.value); }
      catch (e) { card.append(el("div", "error-banner", "The input is not JSON: " + e.message)); return; }
    } else body.message = "Denied in the console";
    try { await api("POST", "/api/v1/sessions/" + state.session.session_id + "/permissions/" + ev.request_id, body); }
    catch (e) { card.append(el("div", "error-banner", e.message)); return; }
    card.className = "meta answered";
    card.replaceChildren(ev.tool_name + ": " + (behavior === "allow" ? (always ? "always allowed" : "allowed") : "denied"));
  };
  const allow = el("button", "primary", "Allow"); allow.onclick = () => answer("allow", false);
  const always = el("button", "", "Always allow"); always.onclick = () => answer("allow", true);
  const deny = el("button", "danger", "Deny"); deny.onclick = () => answer("deny", false);
  card.append(input, allow, document.createTextNode(" "), always, document.createTextNode(" "), deny);
  return card;
}

async function refreshSession() {
  if (!state.session) return;
  const s = await api("GET", "/api/v1/sessions/" + state.session.session_id);
  state.session = s;
  showDetails(s);
  loadSessions();
}

async function send() {
  const text = $("message").value;
  if (!state.session || !text.trim()) return;
  const id = state.session.session_id;
  const mode = state.busy ? $("send-mode").value : "";
  if (mode) return sendWhileBusy(id, text, mode);
  setBusy(true);
  $("transcript").append(el("div", "msg user", text));
  state.turn = null;
  stickToBottom();
  // Remembered before the request: a reload during its round trip (its events may already be
  // streaming) still shows the message and replays the turn from the last event seen here.
  localStorage.setItem(pendingKey(id), JSON.stringify({ turn_id: null, after: state.lastEventId || 0, text, sent: Date.now() }));
  try {
    const turn = await api("POST", "/api/v1/sessions/" + id + "/messages", { message: text });
    localStorage.setItem(pendingKey(id), JSON.stringify({ turn_id: turn.turn_id, after: turn.first_event_id - 1, text }));
    $("message").value = "";
  } catch (e) {
    // Refused by the service: no turn. A network error may be this page unloading (a reload
    // aborts the request, which may have arrived): the reloaded page decides.
    if (!(e instanceof TypeError || e.name === "AbortError")) localStorage.removeItem(pendingKey(id));
    $("transcript").append(el("div", "error-banner", e.message));
    setBusy(false);
  }
}

async function interrupt(cancelQueue) {
  if (!state.session) return;
  const query = cancelQueue ? "?cancel_queue=true" : "";
  try { await api("POST", "/api/v1/sessions/" + state.session.session_id + "/interrupt" + query); }
  catch (e) { $("status").textContent = e.message; }
  if (cancelQueue) loadQueue();
}

// ---- Files -------------------------------------------------------------------------------

async function loadFiles(path) {
  if (!state.session) return;
  state.cwd = path;
  $("path").textContent = "/" + path;
  const list = $("files");
  list.replaceChildren();
  let entries;
  try { entries = await api("GET", "/api/v1/sessions/" + state.session.session_id + "/files?path=" + encodeURIComponent(path)); }
  catch (e) { list.append(el("div", "error-banner", e.message)); return; }
  if (path) {
    const up = el("a", "", "..");
    up.onclick = () => loadFiles(path.split("/").slice(0, -1).join("/"));
    list.append(up);
  }
  for (const f of entries) {
    const row = el("div", "file");
    const child = path ? path + "/" + f.name : f.name;
    const link = el("a", "", f.name + (f.kind === "dir" ? "/" : ""));
    link.onclick = () => f.kind === "dir" ? loadFiles(child) : download(child);
    row.append(link, el("span", "meta", f.kind === "file" ? f.size + " B" : f.kind));
    list.append(row);
  }
}

async function download(path) {
  const res = await fetch("/api/v1/sessions/" + state.session.session_id + "/files?path=" + encodeURIComponent(path),
    { headers: { "Authorization": "Bearer " + state.key } });
  const url = URL.createObjectURL(await res.blob());
  const a = el("a"); a.href = url; a.download = path.split("/").pop(); a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- Wiring ------------------------------------------------------------------------------

$("login-button").onclick = login;
$("key").onkeydown = (e) => { if (e.key === "Enter") login(); };
$("user-select").onchange = () => {
  state.user = $("user-select").value;
  localStorage.setItem("cah_user", state.user);
  loadSessions();
};
$("create-user").onclick = createUser;
$("new-user").onkeydown = (e) => { if (e.key === "Enter") createUser(); };
$("create").onclick = createSession;
$("send").onclick = send;
$("message").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
$("interrupt").onclick = () => interrupt(false);
$("interrupt-all").onclick = () => interrupt(true);
$("send-mode").onchange = updateSend;
$("apply-live").onclick = applyLive;
$("logout").onclick = () => { localStorage.clear(); location.reload(); };
$("nav-toggle").onclick = () => { document.body.classList.toggle("show-nav"); document.body.classList.remove("show-side"); };
$("side-toggle").onclick = () => { document.body.classList.toggle("show-side"); document.body.classList.remove("show-nav"); };
$("side-close").onclick = () => document.body.classList.remove("show-side");
if (state.key) login();
