// videogen's web page: sign in with an API key, create videos, and watch them render.
//
// Plain modern JavaScript against the public API, nothing else: the page can do exactly what
// curl or the SDK can. Progress comes from each job's event stream, read with fetch (an
// EventSource cannot send the Authorization header) and reconnected with Last-Event-ID after
// the `retry:` the server asks for, so a dropped stream or an API restart loses no update.
// Finished videos play from their expiring content URL, which needs no key.

const KEY_STORAGE = "videogen.apiKey";
const FINAL = new Set(["completed", "failed", "cancelled"]);
const PAGE_SIZE = 12;
const FIELDS = ["prompt", "model", "size", "seconds", "num_inference_steps", "seed",
  "negative_prompt"];

const $ = (selector) => document.querySelector(selector);
const state = { key: null, models: [], cards: new Map(), cursor: null };

class ApiFailure extends Error {
  constructor(status, error, retryAfter) {
    super(error?.message || `the API answered HTTP ${status}`);
    this.status = status;
    this.param = error?.param || null;
    this.code = error?.code || null;
    this.retryAfterMs = Number(retryAfter || 2) * 1000;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const failure = new ApiFailure(response.status, data?.error,
      response.headers.get("Retry-After"));
    if (response.status === 401 && state.key) signOut(failure.message);
    throw failure;
  }
  return data;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- signing in -------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    state.models = (await api("/v1/models")).data;
  } catch (failure) {
    state.key = null;
    const why = failure.status === 401
      ? `That key was refused (${failure.message}). Check it, or ask your operator for one.`
      : `Could not reach the API: ${failure.message}. Try again in a moment.`;
    showSignIn(why);
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("#sign-in-panel").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  fillModels();
  await loadVideos();
}

function showSignIn(message) {
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in-panel").hidden = false;
  $("#api-key-error").textContent = message;
  $("#api-key").focus();
}

function signOut(message = "") {
  state.key = null;
  localStorage.removeItem(KEY_STORAGE);
  for (const card of state.cards.values()) card.stopped = true;
  state.cards.clear();
  $("#videos").replaceChildren();
  showSignIn(message);
}

// --- the create form --------------------------------------------------------------------

function options(select, values, chosen) {
  select.replaceChildren(...values.map((value) => {
    const option = new Option(String(value), String(value));
    option.selected = String(value) === String(chosen);
    return option;
  }));
}

function fillModels() {
  const select = $("#model");
  const preferred = state.models.find((m) => m.default) || state.models[0];
  select.replaceChildren(...state.models.map((m) => {
    const option = new Option(m.default ? `${m.id} (default)` : m.id, m.id);
    option.selected = m === preferred;
    return option;
  }));
  fillLimits();
}

function fillLimits() {
  const model = state.models.find((m) => m.id === $("#model").value);
  if (!model) return;
  options($("#size"), model.sizes, model.default_size);
  options($("#seconds"), model.seconds, model.default_seconds);
  const steps = $("#num_inference_steps");
  steps.max = model.max_steps;
  steps.placeholder = String(model.default_steps);
  $("#help-steps").textContent =
    `1 to ${model.max_steps}; empty: the model's ${model.default_steps}.`;
}

function clearErrors() {
  for (const field of FIELDS) $(`#error-${field}`).textContent = "";
  $("#create-error").textContent = "";
}

function showError(param, message) {
  const slot = FIELDS.includes(param) ? $(`#error-${param}`) : $("#create-error");
  slot.textContent = message;
  const input = FIELDS.includes(param) ? $(`#${param}`) : null;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

// The request body; a number field the browser could not read is an error of its own (its
// value is then empty, which would otherwise silently mean "the default").
function createBody() {
  const body = {
    prompt: $("#prompt").value,
    model: $("#model").value,
    size: $("#size").value,
    seconds: Number($("#seconds").value),
  };
  for (const name of ["num_inference_steps", "seed"]) {
    const input = $(`#${name}`);
    if (input.validity.badInput) return { error: [name, `${name}: must be a whole number`] };
    if (input.value !== "") body[name] = Number(input.value);
  }
  const negative = $("#negative_prompt").value;
  if (negative) body.negative_prompt = negative;
  return { body };
}

async function create(event) {
  event.preventDefault();
  clearErrors();
  for (const field of FIELDS) $(`#${field}`).removeAttribute("aria-invalid");
  const { body, error } = createBody();
  if (error) {
    showError(...error);
    return;
  }
  const button = $("#create-button");
  button.disabled = true;
  button.textContent = "Creating…";
  try {
    const video = await api("/v1/videos", { method: "POST", body });
    // The list of earlier videos, if it was still arriving, may have brought it already.
    if (!state.cards.has(video.id)) addCard(video, { first: true });
  } catch (failure) {
    showError(failure.param, failure.message);
  } finally {
    button.disabled = false;
    button.textContent = "Create video";
  }
}

// --- the list of videos -----------------------------------------------------------------

async function loadVideos() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.cursor) query.set("after", state.cursor);
  let page;
  try {
    page = await api(`/v1/videos?${query}`);
  } catch (failure) {
    $("#create-error").textContent = `Could not list your videos: ${failure.message}`;
    return;
  }
  for (const video of page.data) if (!state.cards.has(video.id)) addCard(video);
  state.cursor = page.next_cursor;
  $("#more").hidden = !page.has_more;
  $("#videos-empty").hidden = state.cards.size > 0;
}

function addCard(video, { first = false } = {}) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = video.id;
  const card = { id: video.id, node, video, stopped: false, shown: false, followingQueue: false };
  state.cards.set(video.id, card);
  node.querySelector(".cancel").addEventListener("click", () => cancel(card));
  node.querySelector(".delete").addEventListener("click", () => remove(card));
  if (first) $("#videos").prepend(node);
  else $("#videos").append(node);
  $("#videos-empty").hidden = true;
  render(card, video);
  if (!FINAL.has(video.status)) watch(card);
}

// --- one card ---------------------------------------------------------------------------

function seconds(fromNow) {
  const s = Math.max(0, Math.round(fromNow));
  return s < 90 ? `${s} s` : `${Math.round(s / 60)} min`;
}

function statusLine(v) {
  if (v.status === "queued") {
    const place = v.queue_position == null ? "" : `, ${v.queue_position} ahead`;
    const eta = v.estimated_start_at == null ? ""
      : `, starts in about ${seconds(v.estimated_start_at - Date.now() / 1000)}`;
    return `Queued${place}${eta}`;
  }
  if (v.status !== "in_progress") return v.status[0].toUpperCase() + v.status.slice(1);
  // The job has ended but its workflow is still tidying up (a cancel, say).
  if (v.phase === "cancelled") return "Cancelling…";
  if (v.phase === "denoising") return `Denoising: step ${v.step} of ${v.total_steps}`;
  if (v.phase === "resuming") return `Resuming from step ${v.resumed_from_step ?? 0}`;
  return v.phase[0].toUpperCase() + v.phase.slice(1);
}

function detailLine(v) {
  const parts = [];
  if (v.attempt > 1) parts.push(`attempt ${v.attempt}`);
  if (v.resumed_from_step != null) {
    const verb = v.phase === "resuming" ? "resuming" : "resumed";
    parts.push(`${verb} from step ${v.resumed_from_step} after a GPU was lost`);
  }
  if (v.wasted_steps > 0) parts.push(`${v.wasted_steps} steps redone`);
  return parts.join(" · ");
}

// queued, then in progress, then an end: a job never goes back. An answer that does (the
// cancel's, read while the job was closing, arriving after the stream's final event) is stale.
const RANK = { queued: 0, in_progress: 1, completed: 2, failed: 2, cancelled: 2 };

function render(card, v) {
  if (RANK[v.status] < RANK[card.video.status]) return;
  card.video = v;
  const q = (selector) => card.node.querySelector(selector);
  card.node.dataset.status = v.status;
  q(".prompt").textContent = v.prompt;
  q(".meta").textContent = `${v.model_version || v.model} · ${v.size} · ${v.seconds} s · ` +
    `seed ${v.seed}`;
  q(".status").textContent = statusLine(v);
  q(".detail").textContent = detailLine(v);
  const bar = q("progress");
  bar.value = v.progress;
  bar.setAttribute("aria-label", `${v.progress} % done`);
  bar.hidden = FINAL.has(v.status);
  q(".cancel").hidden = FINAL.has(v.status);
  q(".delete").hidden = !FINAL.has(v.status);
  q(".failure").textContent = v.error ? `${v.error.code}: ${v.error.message}` : "";
  if (v.status === "queued" && !card.followingQueue) followQueue(card);
  if (v.status === "completed" && !card.shown) {
    card.shown = true;
    showVideo(card);
  }
}

async function contentUrl(id, variant) {
  return api(`/v1/videos/${id}/content_url?variant=${variant}`);
}

async function showVideo(card) {
  const q = (selector) => card.node.querySelector(selector);
  try {
    const [video, thumbnail] = await Promise.all([
      contentUrl(card.id, "video"), contentUrl(card.id, "thumbnail"),
    ]);
    const player = q("video");
    player.poster = thumbnail.url;
    player.src = video.url;
    player.setAttribute("aria-label", `video: ${card.video.prompt}`);
    q(".download").href = video.url;
    q(".share").href = video.url;
    const expiry = new Date(video.expires_at * 1000).toLocaleString();
    q(".expiry").textContent = `Links work without a key until ${expiry}.`;
    q(".player").hidden = false;
  } catch (failure) {
    q(".failure").textContent = `The video cannot be shown: ${failure.message}`;
  }
}

async function cancel(card) {
  try {
    render(card, await api(`/v1/videos/${card.id}/cancel`, { method: "POST" }));
  } catch (failure) {
    card.node.querySelector(".failure").textContent = failure.message;
  }
}

async function remove(card) {
  try {
    await api(`/v1/videos/${card.id}`, { method: "DELETE" });
  } catch (failure) {
    card.node.querySelector(".failure").textContent = failure.message;
    return;
  }
  card.stopped = true;
  card.node.remove();
  state.cards.delete(card.id);
  $("#videos-empty").hidden = state.cards.size > 0;
}

// --- live progress ----------------------------------------------------------------------

// One server-sent event block ("field: value" lines) as {id, event, data, retry}.
function parseEvent(block) {
  const event = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    event[field] = field === "data" && event.data ? `${event.data}\n${value}` : value;
  }
  return event;
}

async function watch(card) {
  let lastId = null;
  let retryMs = 1000;
  while (!card.stopped && !FINAL.has(card.video.status)) {
    try {
      const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`/v1/videos/${card.id}/events`, { headers });
      if (response.status === 204) return;  // the final event was seen already
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        throw new ApiFailure(response.status, data?.error, response.headers.get("Retry-After"));
      }
      let buffer = "";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      while (!card.stopped) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        for (let end; (end = buffer.indexOf("\n\n")) >= 0;) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.retry) retryMs = Number(event.retry);
          if (event.id) lastId = event.id;
          if (event.data) render(card, JSON.parse(event.data));
        }
      }
      if (card.stopped) reader.cancel();
    } catch (failure) {
      if (failure.status === 401 || failure.status === 404) return;
      if (failure.retryAfterMs) retryMs = failure.retryAfterMs;
    }
    if (!FINAL.has(card.video.status)) await sleep(retryMs);
  }
}

// A queued job's place in line changes as the jobs ahead start, which is no event of its
// own: while it waits, its queue position and estimated start are read again, as often as
// the API's openai-poll-after-ms header says.
async function followQueue(card) {
  card.followingQueue = true;
  while (!card.stopped && card.video.status === "queued") {
    let wait = 2000;
    try {
      const response = await fetch(`/v1/videos/${card.id}`,
        { headers: { Authorization: `Bearer ${state.key}` } });
      if (response.ok) {
        const v = await response.json();
        wait = Number(response.headers.get("openai-poll-after-ms")) || wait;
        if (v.status === "queued" && card.video.status === "queued") {
          render(card, { ...card.video, queue_position: v.queue_position,
            estimated_start_at: v.estimated_start_at });
        }
      }
    } catch {
      // Unreachable for a moment: the event stream reconnects by itself; try again later.
    }
    await sleep(wait);
  }
  card.followingQueue = false;
}

// --- start ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (!key) {
      $("#api-key-error").textContent = "Enter your API key.";
      return;
    }
    $("#api-key-error").textContent = "";
    signIn(key);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#create").addEventListener("submit", create);
  $("#model").addEventListener("change", fillLimits);
  $("#more").addEventListener("click", loadVideos);
  const saved = localStorage.getItem(KEY_STORAGE);
  if (saved) signIn(saved);
});
