// The page: speak a text while it streams (raw 24 kHz 16-bit PCM read with fetch, played with WebAudio),
// then offer the whole audio as a WAV download; pick, upload and delete voices.
// Progress is mirrored in <body data-state data-bytes data-played> so tests (and people) can see it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, ctx: null, abort: null, nextTime: 0, sources: [], downloadUrl: null };

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  localStorage.setItem("fcb-api-key", key);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setStatus(text, isError = false, el = $("status")) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function loadInfo() {
  state.info = await (await fetch("/info")).json();
  $("model-info").textContent = `${state.info.model} ${state.info.version} · preset ${state.info.preset} · ${state.info.device}`;
  $("random-banner").hidden = !state.info.random_weights;
  $("key-section").hidden = !state.info.auth_required;
  $("upload-section").hidden = !state.info.voice_uploads;
  $("char-limit").textContent = state.info.max_input_chars;
  $("text").maxLength = state.info.max_input_chars;
  // the controls this model takes (Flash has no CFG weight)
  for (const input of $("params").querySelectorAll("input")) {
    if (input.id !== "speed") input.closest("label").hidden = !state.info.parameters.includes(input.id);
  }
  // the multilingual model speaks many languages: pick one (the others speak English only)
  const languages = state.info.languages;
  $("language-label").hidden = languages.length < 2;
  for (const language of languages) $("language").add(new Option(language, language, false, language === "en"));
}

async function loadVoices(select) {
  const response = await fetch("/v1/audio/voices", { headers: headers() });
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  const voices = (await response.json()).data;
  const picker = $("voice");
  const current = select || picker.value;
  picker.innerHTML = "";
  for (const voice of voices) {
    const option = new Option(voice.type === "custom" ? `${voice.id} (uploaded)` : voice.id, voice.id);
    option.dataset.type = voice.type;
    picker.add(option);
  }
  if ([...picker.options].some((o) => o.value === current)) picker.value = current;
  updateDelete();
}

function updateDelete() {
  const option = $("voice").selectedOptions[0];
  $("delete-voice").disabled = !option || option.dataset.type !== "custom";
}

function numberField(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody() {
  const body = {
    model: state.info.model, input: $("text").value, voice: $("voice").value, response_format: "pcm",
    stream_format: "audio", speed: numberField("speed"),
  };
  for (const name of ["exaggeration", "cfg_weight", "temperature", "seed"]) {
    if (state.info.parameters.includes(name)) body[name] = numberField(name);  // the model takes it
  }
  if ($("optimize_quality").checked) body.optimize_quality = true;
  if (!$("language-label").hidden) body.language = $("language").value;
  return body;
}

// 16-bit little-endian samples -> a scheduled AudioBuffer, played right after the previous one
function play(samples) {
  const ctx = state.ctx;
  const buffer = ctx.createBuffer(1, samples.length, state.info.sample_rate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  state.nextTime = Math.max(state.nextTime, ctx.currentTime + 0.05);
  source.start(state.nextTime);
  state.nextTime += buffer.duration;
  state.sources.push(source);
  if (ctx.state === "running") document.body.dataset.played = "1";
}

function wavBlob(chunks, bytes, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + bytes, true); text(8, "WAVEfmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, bytes, true);
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

async function speak() {
  stopPlayback();
  const body = document.body;
  body.dataset.state = "streaming"; body.dataset.bytes = "0"; body.dataset.played = "0";
  $("download").hidden = true;
  $("speak").disabled = true; $("stop").disabled = false;
  setStatus("synthesising…");
  // created on the click, so the browser lets it play
  state.ctx = state.ctx || new AudioContext();
  await state.ctx.resume();
  state.nextTime = 0;
  state.abort = new AbortController();
  const chunks = [];
  let total = 0, carry = null;
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(requestBody()), signal: state.abort.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry !== null) {  // a sample split across two reads
        bytes = new Uint8Array(value.length + 1);
        bytes[0] = carry; bytes.set(value, 1);
        carry = null;
      }
      if (bytes.length % 2) { carry = bytes[bytes.length - 1]; bytes = bytes.subarray(0, bytes.length - 1); }
      if (!bytes.length) continue;
      const copy = bytes.slice();
      chunks.push(copy);
      total += copy.length;
      body.dataset.bytes = String(total);
      play(new Int16Array(copy.buffer));
      setStatus(`playing… ${(total / 2 / state.info.sample_rate).toFixed(1)} s received`);
    }
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = URL.createObjectURL(wavBlob(chunks, total, state.info.sample_rate));
    $("download").href = state.downloadUrl;
    $("download").hidden = false;
    body.dataset.state = "done";
    setStatus(`done: ${(total / 2 / state.info.sample_rate).toFixed(2)} s of audio`);
  } catch (err) {
    body.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    setStatus(err.name === "AbortError" ? "stopped" : err.message, err.name !== "AbortError");
  } finally {
    $("speak").disabled = false; $("stop").disabled = true;
    state.abort = null;
  }
}

function stopPlayback() {
  for (const source of state.sources) { try { source.stop(); } catch (_) { /* not started */ } }
  state.sources = [];
}

async function upload(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("upload-name").value.trim());
  form.append("file", $("upload-file").files[0]);
  setStatus("uploading…", false, $("upload-status"));
  const response = await fetch("/v1/audio/voices", { method: "POST", headers: headers(), body: form });
  if (!response.ok) {
    setStatus(await errorText(response), true, $("upload-status"));
    return;
  }
  const voice = await response.json();
  setStatus(`added ${voice.id} (${voice.seconds} s)`, false, $("upload-status"));
  await loadVoices(voice.id);
}

async function deleteVoice() {
  const name = $("voice").value;
  if (!confirm(`Delete the voice ${name}?`)) return;
  const response = await fetch(`/v1/audio/voices/${encodeURIComponent(name)}`, { method: "DELETE", headers: headers() });
  if (!response.ok) setStatus(await errorText(response), true);
  await loadVoices("default");
}

async function main() {
  $("api-key").value = localStorage.getItem("fcb-api-key") || "";
  $("text").addEventListener("input", () => { $("char-count").textContent = $("text").value.length; });
  $("char-count").textContent = $("text").value.length;
  $("speak").addEventListener("click", speak);
  $("stop").addEventListener("click", () => { if (state.abort) state.abort.abort(); stopPlayback(); });
  $("voice").addEventListener("change", updateDelete);
  $("delete-voice").addEventListener("click", deleteVoice);
  $("upload").addEventListener("submit", upload);
  $("api-key").addEventListener("change", () => loadVoices());
  await loadInfo();
  await loadVoices("default");
  document.body.dataset.state = "idle";
}

main().catch((err) => { setStatus(err.message, true); document.body.dataset.state = "error"; });
