// The voicedb page: the library's HTTP API (the same one every client uses), from a browser.
// No framework and no build step: each section below reads and writes its own part of the page.
"use strict";

const RATE = 24000; // Chatterbox speaks at 24 kHz; "pcm" responses are 16-bit mono at that rate
const KEY = "voicedb-api-key";
const $ = (selector, root = document) => root.querySelector(selector);

// -- talking to the server ------------------------------------------------------------------------------

class ApiError extends Error {}

/** One API call: adds the API key when there is one, asks for it on 401, throws the server's message. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    await askForKey(key ? "That key was refused. " : "");
    return api(path, options);
  }
  if (!response.ok) throw new ApiError(await errorMessage(response));
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message || body.detail || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

let keyAsked = null; // one question at a time, however many calls were refused together

function askForKey(prefix) {
  keyAsked ??= new Promise((resolve, reject) => {
    const dialog = $("#key-dialog");
    $("#key-input").value = "";
    $("p", dialog).textContent = `${prefix}This server needs its API key. It is kept in this browser tab only.`;
    dialog.addEventListener("close", () => {
      keyAsked = null;
      const key = $("#key-input").value.trim();
      if (dialog.returnValue === "ok" && key) {
        sessionStorage.setItem(KEY, key);
        resolve();
      } else {
        reject(new ApiError("an API key is needed to use this server."));
      }
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
  return keyAsked;
}

/** Runs an action of the page, showing its error (one line) instead of failing silently; a user's action
 * (``clear``) first clears the last error, background loading does not. */
async function attempt(action, clear = true) {
  const messages = $("#messages");
  if (clear) messages.textContent = "";
  try {
    return await action();
  } catch (error) {
    messages.textContent = error instanceof ApiError ? `Error: ${error.message}` : `Error: ${error}`;
    return undefined;
  }
}

async function playBlob(response) {
  const url = URL.createObjectURL(await response.blob());
  const audio = new Audio(url);
  audio.addEventListener("ended", () => URL.revokeObjectURL(url));
  await audio.play().catch(() => {}); // a browser that refuses autoplay still has the clip decoded
  return audio;
}

// -- the voices ---------------------------------------------------------------------------------------------

let voices = [];

async function loadVoices() {
  const body = await (await api("/v1/voices")).json();
  voices = body.voices;
  const tags = [...new Set(voices.flatMap((voice) => voice.tags))].sort();
  const filter = $("#tag-filter");
  const chosen = filter.value;
  filter.replaceChildren(new Option("any tag", ""), ...tags.map((tag) => new Option(tag, tag)));
  filter.value = tags.includes(chosen) ? chosen : "";
  const select = $("#speak-voice");
  const spoken = select.value;
  select.replaceChildren(...voices.map((voice) => new Option(voice.name, voice.id)));
  if (voices.some((voice) => voice.id === spoken)) select.value = spoken;
  renderCards();
}

function renderCards() {
  const query = $("#search").value.trim().toLowerCase();
  const tag = $("#tag-filter").value;
  const shown = voices.filter(
    (voice) => voice.name.toLowerCase().includes(query) && (!tag || voice.tags.includes(tag)),
  );
  $("#voice-count").textContent = voices.length
    ? `${shown.length} of ${voices.length} voices`
    : "No voices yet: enroll one below.";
  $("#cards").replaceChildren(...shown.map(card));
}

function card(voice) {
  const item = $("#card-template").content.firstElementChild.cloneNode(true);
  item.dataset.id = voice.id;
  $(".card-name", item).textContent = voice.name;
  $(".card-id", item).textContent = voice.id;
  $(".card-tags", item).replaceChildren(
    ...(voice.tags.length ? voice.tags.map(tagChip) : [document.createTextNode("none")]),
  );
  $(".card-language", item).textContent = voice.language || "not set";
  $(".card-seconds", item).textContent = `${voice.seconds.toFixed(1)} s in ${voice.clips} clip${voice.clips === 1 ? "" : "s"}`;
  $(".card-models", item).textContent = voice.models.join(", ") || "none yet";
  $(".card-rename-input", item).value = voice.name;
  $(".card-rename-input", item).setAttribute("aria-label", `New name for ${voice.name}`);
  $(".card-tags-input", item).value = voice.tags.join(", ");
  $(".card-tags-input", item).setAttribute("aria-label", `Tags of ${voice.name}`);
  $(".card-rename", item).addEventListener("click", () => attempt(() => rename(voice, item)));
  $(".card-retag", item).addEventListener("click", () => attempt(() => retag(voice, item)));
  $(".card-delete", item).addEventListener("click", () => attempt(() => remove(voice)));
  $(".card-delete", item).setAttribute("aria-label", `Delete ${voice.name}`);
  attempt(() => addClipButtons(voice, $(".card-clips", item)), false);
  return item;
}

function tagChip(tag) {
  const chip = document.createElement("span");
  chip.className = "tag";
  chip.textContent = tag;
  return chip;
}

async function addClipButtons(voice, holder) {
  const details = await (await api(`/v1/voices/${voice.id}`)).json();
  holder.replaceChildren(...details.clip_files.map((clip, n) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "play-clip";
    button.textContent = `▶ Clip ${n + 1} (${clip.seconds.toFixed(1)} s)`;
    button.setAttribute("aria-label", `Play clip ${n + 1} of ${voice.name}, ${clip.source}`);
    button.addEventListener("click", () => attempt(async () => {
      await playBlob(await api(`/v1/voices/${voice.id}/clips/${clip.sha256}`));
      button.dataset.played = "true";
    }));
    return button;
  }));
}

const patchVoice = (voice, body) =>
  api(`/v1/voices/${voice.id}`, {
    method: "PATCH",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });

async function rename(voice, item) {
  await patchVoice(voice, { name: $(".card-rename-input", item).value.trim() });
  await loadVoices();
}

async function retag(voice, item) {
  await patchVoice(voice, { tags: splitTags($(".card-tags-input", item).value) });
  await loadVoices();
}

async function remove(voice) {
  if (!confirm(`Delete voice ${voice.name} (${voice.id}) with its clips and conditionals?`)) return;
  await api(`/v1/voices/${voice.id}`, { method: "DELETE" });
  await loadVoices();
}

const splitTags = (text) => text.split(",").map((tag) => tag.trim()).filter(Boolean);

// -- recording from the microphone -----------------------------------------------------------------------------

/** Makes ``button`` start and stop a MediaRecorder; each recording is added to ``clips``, listed, and
 * ``onRecorded`` is called. */
function recorder(button, clips, list, onRecorded = () => {}) {
  let active = null;
  button.setAttribute("aria-pressed", "false");
  button.addEventListener("click", () => attempt(async () => {
    if (active) {
      active.stop();
      return;
    }
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    active = new MediaRecorder(stream);
    active.addEventListener("dataavailable", (event) => chunks.push(event.data));
    active.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      const type = active.mimeType || "audio/webm";
      const clip = new File(chunks, `recording-${clips.length + 1}.${type.includes("ogg") ? "ogg" : "webm"}`, { type });
      clips.push(clip);
      const entry = document.createElement("li");
      entry.textContent = `${clip.name} (${(clip.size / 1024).toFixed(0)} KB)`;
      list.append(entry);
      active = null;
      button.textContent = "Record from the microphone";
      button.setAttribute("aria-pressed", "false");
      onRecorded();
    });
    active.start();
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
  }));
}

// -- enrolling ---------------------------------------------------------------------------------------------------

const recordedForEnroll = [];

function enrollForm(dryRun) {
  const form = new FormData();
  for (const file of [...$("#enroll-files").files, ...recordedForEnroll]) form.append("file", file);
  form.append("name", $("#enroll-name").value.trim());
  form.append("tags", $("#enroll-tags").value);
  const language = $("#enroll-language").value.trim();
  if (language) form.append("language", language);
  form.append("dry_run", dryRun ? "true" : "false");
  return form;
}

async function checkClips() {
  if (!$("#enroll-files").files.length && !recordedForEnroll.length) throw new ApiError("choose or record a clip first.");
  $("#enroll-report").textContent = "Checking the clips…";
  const result = await (await api("/v1/voices", { method: "POST", body: enrollForm(true) })).json();
  const report = $("#enroll-report");
  const summary = document.createElement("p");
  summary.textContent = `${result.clips} clip${result.clips === 1 ? "" : "s"}, ${result.seconds.toFixed(1)} s of audio.`;
  const warnings = document.createElement("ul");
  warnings.className = "warnings";
  warnings.replaceChildren(...result.warnings.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  const verdict = document.createElement("p");
  verdict.className = result.warnings.length ? "" : "ok";
  verdict.textContent = result.warnings.length
    ? "Enroll anyway, or choose better clips."
    : "No quality warnings: ready to enroll.";
  report.replaceChildren(summary, warnings, verdict);
  $("#enroll-confirm").disabled = false;
  $("#enroll-confirm").focus();
}

async function enroll() {
  const result = await (await api("/v1/voices", { method: "POST", body: enrollForm(false) })).json();
  $("#enroll-report").textContent = `Enrolled ${result.name} (${result.id}).`;
  $("#enroll-confirm").disabled = true;
  $("#enroll-form").reset();
  recordedForEnroll.length = 0;
  $("#enroll-recorded").replaceChildren();
  await loadVoices();
}

// -- speaking ------------------------------------------------------------------------------------------------------

const OPENAI_MODELS = new Set(["tts-1", "tts-1-hd", "gpt-4o-mini-tts"]);
let lastRequest = null;

async function loadModels() {
  const body = await (await api("/v1/audio/models")).json();
  const flavours = body.models.map((model) => model.id).filter((id) => !OPENAI_MODELS.has(id));
  $("#speak-model").replaceChildren(...flavours.map((id) => new Option(id, id)));
}

function speechRequest() {
  const seedText = $("#speak-seed").value;
  return {
    input: $("#speak-text").value,
    voice: $("#speak-voice").value,
    model: $("#speak-model").value,
    exaggeration: Number($("#speak-exaggeration").value),
    cfg_weight: Number($("#speak-cfg").value),
    temperature: Number($("#speak-temperature").value),
    // a seed of its own when none is given, so that a download is the very audio that played
    seed: seedText === "" ? Math.floor(Math.random() * 2 ** 31) : Number(seedText),
  };
}

/** Streams the speech as OpenAI's SSE events of 16-bit PCM and plays each piece as it arrives. */
async function speak() {
  if (!$("#speak-voice").value) throw new ApiError("enroll a voice first.");
  lastRequest = speechRequest();
  const body = { ...lastRequest, response_format: "pcm", stream_format: "sse" };
  const status = $("#speak-status");
  status.textContent = "Synthesising…";
  const response = await api("/v1/audio/speech", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const context = new AudioContext({ sampleRate: RATE });
  let startAt = context.currentTime;
  const pieces = [];
  let first = null;
  const started = performance.now();
  for await (const samples of pcmEvents(response)) {
    first ??= performance.now() - started;
    pieces.push(samples);
    const buffer = context.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    startAt = Math.max(startAt, context.currentTime);
    source.start(startAt);
    startAt += buffer.duration;
    status.textContent = `Playing… (first audio after ${(first / 1000).toFixed(1)} s)`;
  }
  const total = pieces.reduce((sum, piece) => sum + piece.length, 0);
  status.textContent = `Spoke ${(total / RATE).toFixed(1)} s of audio with seed ${lastRequest.seed} (first audio after ${((first ?? 0) / 1000).toFixed(1)} s).`;
  const audio = $("#speak-audio");
  audio.src = URL.createObjectURL(wavBlob(pieces, total));
  audio.hidden = false;
  $("#speak-download").disabled = false;
}

/** Yields each ``speech.audio.delta`` event's audio as float samples. */
async function* pcmEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let carry = new Uint8Array(0); // an odd byte left between events belongs to the next sample
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    const events = pending.split("\n\n");
    pending = events.pop();
    for (const event of events) {
      const data = JSON.parse(event.replace(/^data: /, ""));
      if (data.type !== "speech.audio.delta") continue;
      const bytes = Uint8Array.from(atob(data.audio), (c) => c.charCodeAt(0));
      const joined = new Uint8Array(carry.length + bytes.length);
      joined.set(carry);
      joined.set(bytes, carry.length);
      const whole = joined.length - (joined.length % 2);
      carry = joined.slice(whole);
      const ints = new Int16Array(joined.buffer, 0, whole / 2);
      yield Float32Array.from(ints, (sample) => sample / 32768);
    }
  }
}

function wavBlob(pieces, total) {
  const view = new DataView(new ArrayBuffer(44 + total * 2));
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + total * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, RATE, true); view.setUint32(28, RATE * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, total * 2, true);
  let offset = 44;
  for (const piece of pieces) {
    for (const sample of piece) {
      view.setInt16(offset, Math.max(-1, Math.min(1, sample)) * 32767, true);
      offset += 2;
    }
  }
  return new Blob([view], { type: "audio/wav" });
}

/** The same request (the same seed) again, in the chosen format, saved as a file. */
async function download() {
  const format = $("#speak-format").value;
  $("#speak-status").textContent = `Preparing the ${format} file…`;
  const response = await api("/v1/audio/speech", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...lastRequest, response_format: format }),
  });
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(await response.blob()),
    download: `speech-${lastRequest.seed}.${format}`,
  });
  link.click();
  $("#speak-status").textContent = `Saved ${link.download}.`;
}

// -- matching ------------------------------------------------------------------------------------------------------

const recordedForMatch = [];

async function findVoice() {
  const file = $("#match-file").files[0] || recordedForMatch.at(-1);
  if (!file) throw new ApiError("choose, drop or record a clip first.");
  const form = new FormData();
  form.append("file", file);
  $("#match-verdict").textContent = "Listening…";
  const result = await (await api("/v1/match", { method: "POST", body: form })).json();
  const best = result.nearest[0];
  $("#match-verdict").textContent = !best
    ? "The library is empty."
    : result.matched
      ? `Sounds like ${best.name}: ${best.verdict} (score ${best.score.toFixed(2)}, threshold ${result.threshold.toFixed(2)}).`
      : `Unknown speaker: nobody reaches the threshold of ${result.threshold.toFixed(2)} (nearest: ${best.name}, ${best.verdict}).`;
  const scale = SCORE_SCALES[result.scores] ?? SCORE_SCALES.cosine;
  $("#match-results").replaceChildren(...result.nearest.map((hit) => resultRow(hit, result.threshold, scale)));
}

/** The span a score bar covers, by what the scores are: cosines, or cohort margins (docs/matching.md). */
const SCORE_SCALES = { cosine: [0, 1], "cohort margin": [-0.4, 0.6] };

/** A ranked voice: its name, verdict and a bar of its score on ``[low, high]``, with the threshold marked. */
function resultRow(hit, threshold, [low, high]) {
  const along = (score) => `${Math.max(0, Math.min(1, (score - low) / (high - low))) * 100}%`;
  const row = document.createElement("li");
  row.className = "result";
  const label = document.createElement("span");
  label.className = "result-name";
  label.textContent = `${hit.name} — ${hit.score.toFixed(3)}, ${hit.verdict}`;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-valuemin", String(low));
  bar.setAttribute("aria-valuemax", String(high));
  bar.setAttribute("aria-valuenow", String(hit.score));
  bar.setAttribute("aria-label", `score of ${hit.name}`);
  const fill = document.createElement("div");
  fill.className = hit.score >= threshold ? "fill" : "fill below";
  fill.style.width = along(hit.score);
  const mark = document.createElement("div");
  mark.className = "threshold";
  mark.title = `threshold ${threshold.toFixed(2)}`;
  mark.style.left = along(threshold);
  bar.append(fill, mark);
  row.append(label, bar);
  return row;
}

function dropZone(zone, input) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    input.files = event.dataTransfer.files;
  });
}

// -- wiring ---------------------------------------------------------------------------------------------------------

function submit(form, action) {
  form.addEventListener("submit", (event) => { event.preventDefault(); attempt(action); });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search").addEventListener("input", renderCards);
  $("#tag-filter").addEventListener("change", renderCards);
  $("#refresh").addEventListener("click", () => attempt(loadVoices));
  submit($("#enroll-form"), checkClips);
  const checkAgain = () => { $("#enroll-confirm").disabled = true; };  // what was checked has changed
  $("#enroll-files").addEventListener("change", checkAgain);
  $("#enroll-name").addEventListener("input", checkAgain);
  $("#enroll-confirm").addEventListener("click", () => attempt(enroll));
  recorder($("#enroll-record"), recordedForEnroll, $("#enroll-recorded"), checkAgain);
  submit($("#speak-form"), speak);
  $("#speak-download").addEventListener("click", () => attempt(download));
  submit($("#match-form"), findVoice);
  recorder($("#match-record"), recordedForMatch, $("#match-recorded"));
  dropZone($("#match-drop"), $("#match-file"));
  attempt(async () => { await loadVoices(); await loadModels(); });
});
