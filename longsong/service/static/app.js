// The listening page: plain ES module, no build step. Every server text goes in through textContent.

const KEY_STORE = "longsong.key";
const KEYS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"];
const PLAY_ORDER = ["mp3", "opus", "wav", "flac"]; // what the <audio> element gets, first present wins
const STAGES = { queued: "queued", generating: "generating", finishing: "finishing", done: "done",
                 failed: "failed", cancelled: "cancelled" };

const $ = (sel) => document.querySelector(sel);
let key = localStorage.getItem(KEY_STORE) || "";
let current = null; // {id, es, player} for the song on show
let cursor = null;
let historyRun = 0; // a newer history load wins over an older one still in flight

class ApiError extends Error {
  constructor(status, data, headers) {
    super((data && data.error) || `HTTP ${status}`);
    this.status = status;
    this.data = data || {};
    this.headers = headers;
  }
}

/** fetch with the key; a 401 forgets the key and asks for it again, other failures throw ApiError. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (res.status === 401) askKey((data && data.error) || "the key was not accepted");
  if (!res.ok) throw new ApiError(res.status, data, res.headers);
  return { status: res.status, data };
}

/** A file link the browser fetches itself (audio, img, download): the key travels as ?key=. */
function withKey(path) {
  if (!path || !path.startsWith("/")) return path || ""; // presigned links carry their own signature
  return `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(key)}`;
}

function show(el, on) { el.hidden = !on; }
function setText(el, text) { el.textContent = text; show(el, Boolean(text)); }
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function clock(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  const t = Math.round(s);
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
}
function eta(s) {
  if (s === null || s === undefined) return "";
  return s < 90 ? `about ${Math.max(1, Math.round(s))} s left` : `about ${Math.round(s / 60)} min left`;
}
function num(v, digits = 1) { return typeof v === "number" ? v.toFixed(digits) : "–"; }

// ------------------------------------------------------------------------------------------ the key

function askKey(message) {
  localStorage.removeItem(KEY_STORE);
  key = "";
  closeStream();
  show($("#app"), false);
  show($("#key-saved"), false);
  show($("#key-panel"), true);
  setText($("#key-error"), message || "");
  $("#key-input").focus();
}

async function useKey() {
  show($("#key-panel"), false);
  try {
    const { data } = await api("/v1/me");
    setText($("#whoami"), data.key_name ? `${data.user_id} · ${data.key_name}` : data.user_id);
  } catch (err) {
    if (err.status === 401) return;
    setText($("#whoami"), "");
    if (!(err instanceof ApiError)) return askKey(`cannot reach the server: ${err.message}`);
  }
  show($("#key-saved"), true);
  show($("#app"), true);
  loadHistory();
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) openById(wanted);
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("#key-input").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORE, key);
  $("#key-input").value = "";
  useKey();
});
$("#key-forget").addEventListener("click", () => askKey(""));

// ------------------------------------------------------------------------------------------ the form

for (const note of KEYS) {
  for (const mode of ["major", "minor"]) {
    const opt = el("option", "", `${note} ${mode}`);
    opt.value = `${note} ${mode}`;
    $("#key").append(opt);
  }
}

function addSection(start = "", text = "") {
  const row = $("#section-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".section-start").value = start;
  row.querySelector(".section-text").value = text;
  row.querySelector(".section-remove").addEventListener("click", () => row.remove());
  $("#sections").append(row);
  return row;
}
$("#section-add").addEventListener("click", () => {
  const rows = $("#sections").children.length;
  addSection(rows ? "" : "0").querySelector(rows ? ".section-start" : ".section-text").focus();
});

function requestBody() {
  const body = { prompt: $("#prompt").value, engine: $("#engine").value };
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  if (number("#duration") !== undefined) body.duration_s = number("#duration");
  if (number("#bpm") !== undefined) body.bpm = number("#bpm");
  for (const name of ["key", "genre", "mood"]) {
    const v = $(`#${name}`).value.trim();
    if (v) body[name] = v;
  }
  body.formats = [...document.querySelectorAll("input[name=formats]:checked")].map((c) => c.value);
  body.sections = [...$("#sections").children]
    .map((row) => ({ start: row.querySelector(".section-start").value,
                     prompt: row.querySelector(".section-text").value }))
    .filter((s) => s.start !== "" || s.prompt.trim())
    .map((s) => ({ start_s: s.start === "" ? 0 : Number(s.start), prompt: s.prompt }));
  return body;
}

function clearErrors() {
  for (const p of document.querySelectorAll(".field-error")) setText(p, "");
  for (const f of document.querySelectorAll("[aria-invalid]")) f.removeAttribute("aria-invalid");
  setText($("#form-error"), "");
}

/** 422: each message next to its field ("sections[1].start_s" goes to sections); the rest below the form. */
function showErrors(err) {
  const list = err.data.errors && err.data.errors.length ? err.data.errors
    : [{ field: err.data.field, message: err.message }];
  const loose = [];
  for (const { field, message } of list) {
    const name = String(field || "").split(/[.[]/)[0];
    const slot = name && document.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (!slot) { loose.push(message); continue; }
    setText(slot, slot.textContent ? `${slot.textContent} ${message}` : message);
    const input = document.querySelector(`#song-form [name="${CSS.escape(name)}"]`);
    if (input) input.setAttribute("aria-invalid", "true");
  }
  setText($("#form-error"), loose.join(" "));
}

$("#song-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors();
  const button = $("#submit");
  button.disabled = true;
  try {
    const { data } = await api("/v1/songs", { method: "POST", body: requestBody() });
    openSong(data);
    loadHistory();
    reveal();
  } catch (err) {
    if (err.status === 422) showErrors(err);
    else if (err.status === 429) {
      const wait = err.headers.get("Retry-After");
      setText($("#form-error"), wait ? `${err.message} (try again in ${wait} s)` : err.message);
    } else if (err.status !== 401) setText($("#form-error"), err.message);
  } finally {
    button.disabled = false;
  }
});

// ------------------------------------------------------------------------------------------ one song

function closeStream() {
  if (current && current.es) current.es.close();
  if (current) current.es = null;
}

function openSong(song) {
  closeStream();
  current = { id: song.id, es: null, player: false };
  history.replaceState(null, "", `#${encodeURIComponent(song.id)}`);
  const audio = $("#player");
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  show($("#player-box"), false);
  render(song);
  if (song.status === "running") stream(song.id);
  for (const li of $("#history").children) li.classList.toggle("active", li.dataset.id === song.id);
}

/** On a phone the song sits below the form: bring it into view. */
function reveal() {
  if (window.matchMedia("(max-width: 600px)").matches) $("#song").scrollIntoView({ block: "start" });
}

async function openById(id) {
  try {
    const { data } = await api(`/v1/songs/${encodeURIComponent(id)}`);
    openSong(data);
    reveal();
  } catch (err) {
    if (err.status !== 401) setText($("#history-error"), `${id}: ${err.message}`);
  }
}

/** Progress arrives as `progress` events; `end` carries the final song. A closed stream falls back to GET. */
function stream(id) {
  const es = new EventSource(`/v1/songs/${encodeURIComponent(id)}/events?key=${encodeURIComponent(key)}`);
  current.es = es;
  const take = (ev) => {
    try { render(JSON.parse(ev.data)); } catch { /* a malformed event: the next one or the GET catches up */ }
  };
  es.addEventListener("progress", take);
  es.addEventListener("end", (ev) => { es.close(); take(ev); loadHistory(); });
  es.addEventListener("error", (ev) => {
    if (ev.data) { // the server's `event: error` (a blip it keeps watching through), not a lost connection
      try { setText($("#progress-note"), JSON.parse(ev.data).error || ""); } catch { /* not JSON: ignore */ }
      return;
    }
    if (es.readyState !== EventSource.CLOSED || !current || current.es !== es) return;
    setTimeout(() => refresh(id), 2000);
  });
}

async function refresh(id) {
  if (!current || current.id !== id) return;
  try {
    const { data } = await api(`/v1/songs/${encodeURIComponent(id)}`);
    render(data);
    if (data.status === "running" && current && current.id === id) stream(id);
  } catch (err) {
    if (err.status !== 401) setText($("#song-error"), err.message);
  }
}

function render(song) {
  if (!current || song.id !== current.id) return;
  const box = $("#song");
  box.dataset.status = song.status;
  show($("#song-empty"), false);
  show($("#song-body"), true);
  $("#song-prompt").textContent = song.prompt || "";
  const badge = $("#song-status");
  badge.textContent = song.status;
  badge.dataset.status = song.status;
  $("#song-id").textContent = song.id;
  const running = song.status === "running";
  show($("#progress"), running);
  if (running) renderProgress(song.progress || {});
  setText($("#song-error"), song.error || (song.status === "canceled" ? "This song was cancelled." : ""));
  if (song.status === "completed" && !current.player && song.files && Object.keys(song.files).length) {
    current.player = true;
    showPlayer(song);
  }
}

function renderProgress(p) {
  const percent = Math.max(0, Math.min(100, Number(p.percent) || 0));
  $("#bar-fill").style.width = `${percent}%`;
  $(".bar").setAttribute("aria-valuenow", String(percent));
  const parts = [STAGES[p.stage] || p.stage || "queued"];
  if (p.windows_total) parts.push(`window ${p.windows_done || 0} of ${p.windows_total}`);
  parts.push(`${percent}%`);
  if (p.eta_s !== null && p.eta_s !== undefined) parts.push(eta(p.eta_s));
  if (p.elapsed_s) parts.push(`${clock(p.elapsed_s)} elapsed`);
  if (p.rerolls) parts.push(`${p.rerolls} re-roll${p.rerolls === 1 ? "" : "s"}`);
  $("#progress-text").textContent = parts.join(" · ");
  let note = "";
  if (p.retrying) note = `retrying${p.attempt ? ` (attempt ${p.attempt})` : ""}${p.last_failure ? `: ${p.last_failure}` : ""}`;
  else if (p.stalled) note = "no progress for a while: waiting for a worker";
  setText($("#progress-note"), note);
}

$("#cancel").addEventListener("click", async () => {
  if (!current) return;
  const id = current.id;
  $("#cancel").disabled = true;
  try {
    await api(`/v1/songs/${encodeURIComponent(id)}`, { method: "DELETE" });
    setText($("#progress-note"), "cancelling…");
  } catch (err) {
    if (err.status !== 401) setText($("#progress-note"), err.message);
  } finally {
    $("#cancel").disabled = false;
  }
});

function showPlayer(song) {
  const files = song.files;
  const result = song.result || {};
  const duration = result.duration_s || song.duration_s;
  const playable = PLAY_ORDER.find((f) => files[f]);
  const audio = $("#player");
  if (playable) audio.src = withKey(files[playable]);
  show(audio, Boolean(playable));

  const img = $("#waveform");
  show($("#wave"), Boolean(files.waveform));
  if (files.waveform) img.src = withKey(files.waveform);
  const marks = $("#marks");
  marks.replaceChildren();
  const place = (node, t) => {
    const at = Math.max(0, Math.min(100, (t / duration) * 100));
    node.style.left = `${at}%`;
    if (at > 70) node.classList.add("end"); // its label hangs to the left, inside the picture
    marks.append(node);
  };
  for (const s of result.sections || []) {
    const mark = el("div", "mark section");
    mark.title = `${clock(s.start_s)} ${s.prompt}`;
    mark.append(el("span", "label", s.prompt));
    place(mark, s.start_s);
  }
  for (const t of result.seams || []) {
    const mark = el("div", "mark seam");
    mark.title = `seam at ${num(t)} s`;
    place(mark, t);
  }

  const q = [`${clock(duration)}`, `${num(result.loudness_lufs)} LUFS`, `true peak ${num(result.true_peak_dbtp)} dBTP`];
  if (result.quality) q.push(`quality ${result.quality}`);
  if (result.seed !== undefined && result.seed !== null) q.push(`seed ${result.seed}`);
  if (result.model) q.push(result.model);
  $("#quality").textContent = q.join(" · ");

  const list = $("#downloads");
  list.replaceChildren();
  const order = [...PLAY_ORDER, "waveform", "metadata"];
  const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
  for (const [name, path] of Object.entries(files).sort(([a], [b]) => rank(a) - rank(b))) {
    const ext = name === "waveform" ? "png" : name === "metadata" ? "json" : name;
    const a = el("a", "download", name === "waveform" ? "waveform" : name === "metadata" ? "metadata" : name);
    a.href = withKey(path);
    a.download = `longsong-${song.id}.${ext}`;
    a.dataset.format = name;
    const li = el("li");
    li.append(a);
    list.append(li);
  }
  show($("#player-box"), true);
}

$("#wave").addEventListener("click", (ev) => {
  const audio = $("#player");
  if (!audio.duration || !isFinite(audio.duration)) return;
  const axis = $("#marks").getBoundingClientRect(); // the picture's time axis
  audio.currentTime = Math.max(0, Math.min(1, (ev.clientX - axis.left) / axis.width)) * audio.duration;
});

// ------------------------------------------------------------------------------------------ history

async function loadHistory(more = false) {
  const run = ++historyRun;
  const params = new URLSearchParams({ limit: "20" });
  if (more && cursor) params.set("cursor", cursor);
  try {
    const { data } = await api(`/v1/songs?${params}`);
    if (run !== historyRun) return;
    setText($("#history-error"), "");
    const list = $("#history");
    if (!more) list.replaceChildren();
    for (const s of data.songs || []) list.append(historyItem(s));
    cursor = data.next_cursor || null;
    show($("#history-more"), Boolean(cursor));
    show($("#history-empty"), !list.children.length);
  } catch (err) {
    if (run === historyRun && err.status !== 401) setText($("#history-error"), err.message);
  }
}

function historyItem(s) {
  const li = el("li");
  li.dataset.id = s.id;
  li.classList.toggle("active", Boolean(current && current.id === s.id));
  const button = el("button", "history-item");
  button.type = "button";
  const top = el("span", "history-top");
  top.append(el("span", "history-prompt", s.prompt || s.id));
  const badge = el("span", "badge", s.status);
  badge.dataset.status = s.status;
  top.append(badge);
  const when = s.created_at ? new Date(s.created_at).toLocaleString() : "";
  button.append(top, el("span", "history-meta muted", [clock(s.duration_s), s.engine, when].filter(Boolean).join(" · ")));
  button.addEventListener("click", () => openById(s.id));
  li.append(button);
  return li;
}
$("#history-more").addEventListener("click", () => loadHistory(true));

if (key) useKey();
else askKey("");
