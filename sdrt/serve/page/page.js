"use strict";
// sdrt's page. It speaks only the public API (AUTOMATIC1111's /sdapi/v1/... and its ControlNet extension's
// /controlnet/...), so whatever it does, a client can do. No framework, no build step, nothing from the network.

const $ = (id) => document.getElementById(id);
const state = { busy: false, controller: null, lastSeed: null, initImage: null, controlImage: null,
                maskPainted: false, polling: false, retrying: false, started: 0 };

// -- talking to the server ----------------------------------------------------------------------------------

function api(path, body, signal) {
  // location.origin: never the credentials of a user:password@ URL (fetch refuses those); HTTP Basic credentials
  // the browser holds for this origin are sent as for the page itself
  const init = { cache: "no-store", signal };
  if (body !== undefined) {
    Object.assign(init, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }
  return fetch(location.origin + path, init);
}

async function detail(response) {
  try {
    const data = await response.json();
    return data.detail || data.error || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await detail(response));
  return response.json();
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); reject(new DOMException("cancelled", "AbortError")); });
});

// -- start-up: what the export offers -----------------------------------------------------------------------

async function start() {
  bindControls();
  try {
    const [models, samplers] = await Promise.all([getJSON("/sdapi/v1/sd-models"), getJSON("/sdapi/v1/samplers")]);
    const model = models[0];
    $("model").textContent = model.title;
    const info = model.sdrt || {};
    for (const id of ["width", "height"]) {
      $(id).value = info.default_size || 512;
      if (info.size_range) [$(id).min, $(id).max] = info.size_range;
    }
    if (info.max_batch) $("batch_size").max = info.max_batch;
    // the samplers this model runs (a flow model: Euler, Heun, DPM++ 2M, UniPC), else every one the API lists
    fillSelect($("sampler"), info.samplers || samplers.map((s) => s.name), info.default_sampler);
    if (info.cfg_scale) $("cfg_scale").value = info.cfg_scale;
    // Flux: its guidance is an input of the model (Forge's "Distilled CFG scale"); CFG scale is then true CFG
    const distilled = info.distilled_cfg_scale !== undefined;
    for (const el of document.querySelectorAll(".distilled")) el.hidden = !distilled;
    if (distilled) $("distilled_cfg_scale").value = info.distilled_cfg_scale;
  } catch (e) {
    say(`Cannot reach the server: ${e.message}`, true);
    return;
  }
  await Promise.all([loadLoras(), loadControlNets()]);
  say("Ready.");
}

function fillSelect(select, names, chosen) {
  select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
}

async function loadLoras() {
  const loras = await getJSON("/sdapi/v1/loras").catch(() => []);
  fillSelect($("lora"), loras.map((l) => l.name));
  $("lora-row").hidden = loras.length === 0;
}

async function loadControlNets() {
  const models = await getJSON("/controlnet/model_list").catch(() => ({ model_list: [] }));
  if (!models.model_list.length) return;
  const modules = await getJSON("/controlnet/module_list").catch(() => ({ module_list: ["none"] }));
  fillSelect($("cn_model"), models.model_list);
  fillSelect($("cn_module"), modules.module_list, "none");
  $("controlnet").hidden = false;
}

// -- the form -----------------------------------------------------------------------------------------------

const mode = () => document.querySelector("input[name=mode]:checked").value;
const number = (id) => Number($(id).value);

function showMode() {
  $("image-inputs").hidden = mode() === "txt2img";
  $("mask-tools").hidden = $("mask-canvas").hidden = mode() !== "inpaint";
}

function request() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, sampler_name: $("sampler").value,
    steps: number("steps"), cfg_scale: number("cfg_scale"), width: number("width"), height: number("height"),
    seed: number("seed"), batch_size: number("batch_size"),
  };
  if (!$("distilled_cfg_scale").hidden) body.distilled_cfg_scale = number("distilled_cfg_scale");
  if (mode() !== "txt2img") {
    if (!state.initImage) throw new Error("Choose an input image first (or drop one on the Input image box).");
    Object.assign(body, { init_images: [state.initImage], denoising_strength: number("denoising_strength") });
    if (mode() === "inpaint") {
      if (!state.maskPainted) throw new Error("Paint over the part of the image to repaint first.");
      body.mask = maskImage();
    }
  }
  if ($("cn_enabled").checked) {
    if (!state.controlImage) throw new Error("Choose a control image for the ControlNet, or untick Enable.");
    body.alwayson_scripts = { controlnet: { args: [{ enabled: true, model: $("cn_model").value,
      module: $("cn_module").value, weight: number("cn_weight"), image: state.controlImage }] } };
  }
  return body;
}

async function generate() {
  if (state.busy) return;
  let body;
  try {
    body = request();
  } catch (e) {
    say(e.message, true);
    return;
  }
  setBusy(true);
  const controller = state.controller = new AbortController();
  const route = mode() === "txt2img" ? "/sdapi/v1/txt2img" : "/sdapi/v1/img2img";
  const poll = setInterval(pollProgress, 300);
  state.started = performance.now();
  say("Sent…");
  try {
    let response;
    for (;;) {
      response = await api(route, body, controller.signal);
      if (response.status !== 503) break;
      const wait = Number(response.headers.get("Retry-After")) || 2;
      say(`The server is busy: ${await detail(response)}. Retrying in ${wait} s…`, true);
      state.retrying = true;  // the progress shown meanwhile is someone else's job: keep saying why we wait
      await sleep(wait * 1000, controller.signal).finally(() => { state.retrying = false; });
    }
    if (response.status === 401) {
      throw new Error("The server asks for a user name and password (--api-auth): reload the page to log in.");
    }
    if (!response.ok) throw new Error(await detail(response));
    showResults(await response.json());
  } catch (e) {
    if (e.name === "AbortError") say("Cancelled.");
    else say(e.message, true);
  } finally {
    clearInterval(poll);
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("generate").disabled = busy;
  $("interrupt").disabled = $("cancel").disabled = !busy;
  $("progress").hidden = !busy;
  $("progress").value = 0;
  if (!busy) $("preview").hidden = true;
}

async function pollProgress() {
  if (state.polling || !state.busy) return;
  state.polling = true;
  try {
    const p = await getJSON("/sdapi/v1/progress");
    if (!state.busy || state.retrying) return;
    const s = p.state;
    if (s.sampling_steps) {
      $("progress").value = p.progress;
      say(`Step ${s.sampling_step} of ${s.sampling_steps}` + (p.eta_relative ? `, about ${p.eta_relative.toFixed(1)} s left` : ""));
    } else if (performance.now() - state.started > 500) {
      say("Waiting in the queue…");
    }
    if (p.current_image) {
      $("preview").src = "data:image/png;base64," + p.current_image;
      $("preview").hidden = false;
    }
  } catch {
    // a missed poll is retried by the next one
  } finally {
    state.polling = false;
  }
}

// -- results ------------------------------------------------------------------------------------------------

function showResults(data) {
  const info = JSON.parse(data.info);
  const seconds = ((performance.now() - state.started) / 1000).toFixed(1);
  data.images.forEach((image, i) => addResult(image, info.infotexts[i] || "", info.all_seeds[i]));
  state.lastSeed = info.all_seeds[0];
  say(`Done: ${data.images.length} image(s) in ${seconds} s, seed ${info.seed}.`);
}

function addResult(image, infotext, seed) {
  const figure = $("result-template").content.firstElementChild.cloneNode(true);
  const url = "data:image/png;base64," + image;
  figure.querySelector("img").src = url;
  figure.querySelector(".infotext").textContent = infotext;
  const download = figure.querySelector(".download");
  download.href = url;
  download.download = `sdrt-${seed}.png`;
  figure.querySelector(".copy").addEventListener("click", () => copy(infotext));
  figure.querySelector(".use").addEventListener("click", () => readParameters(url));
  $("gallery").prepend(figure);
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API outside secure origins: the selection way
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  say("Parameters copied.");
}

// -- reading a PNG's parameters back into the form ----------------------------------------------------------

async function readParameters(dataUrl) {
  const response = await api("/sdapi/v1/png-info", { image: dataUrl });
  if (!response.ok) return say(await detail(response), true);
  const { info, parameters } = await response.json();
  if (!info) return say("This PNG has no generation parameters.", true);
  const fields = { prompt: "Prompt", negative_prompt: "Negative prompt", steps: "Steps", cfg_scale: "CFG scale",
                   distilled_cfg_scale: "Distilled CFG Scale", seed: "Seed", width: "Size-1", height: "Size-2" };
  for (const [id, key] of Object.entries(fields)) {
    if (parameters[key] !== undefined) $(id).value = parameters[key];
  }
  const sampler = parameters["Sampler"];
  if (sampler && [...$("sampler").options].some((o) => o.value === sampler)) $("sampler").value = sampler;
  say("Parameters read into the form.");
}

const asDataUrl = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

// -- the input image and the inpainting mask ----------------------------------------------------------------

async function setInitImage(file) {
  const url = await asDataUrl(file);
  const image = new Image();
  image.onload = () => {
    for (const canvas of [$("init-canvas"), $("mask-canvas")]) {
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
    }
    $("init-canvas").getContext("2d").drawImage(image, 0, 0);
    state.initImage = url;
    state.maskPainted = false;
    const fit = (v, input) => Math.min(Number(input.max) || v, Math.max(Number(input.min) || 8, Math.floor(v / 8) * 8));
    $("width").value = fit(image.naturalWidth, $("width"));
    $("height").value = fit(image.naturalHeight, $("height"));
  };
  image.onerror = () => say("That file is not an image the browser can read.", true);
  image.src = url;
}

function paint(event) {
  const canvas = $("mask-canvas");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const context = canvas.getContext("2d");
  context.fillStyle = "#e8590c";  // shown at half opacity over the image; any painted pixel is "repaint"
  context.beginPath();
  context.arc((event.clientX - box.left) * scale, (event.clientY - box.top) * scale,
              number("brush") * scale / 2, 0, 2 * Math.PI);
  context.fill();
  state.maskPainted = true;
}

function maskImage() {
  // A1111's mask: white = repaint, black = keep; every painted pixel of the mask canvas is white
  const mask = $("mask-canvas");
  const pixels = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i + 3] > 0 ? 255 : 0;
    data[i] = data[i + 1] = data[i + 2] = value;
    data[i + 3] = 255;
  }
  const flat = Object.assign(document.createElement("canvas"), { width: mask.width, height: mask.height });
  flat.getContext("2d").putImageData(pixels, 0, 0);
  return flat.toDataURL("image/png");
}

// -- wiring -------------------------------------------------------------------------------------------------

function bindControls() {
  $("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  for (const id of ["prompt", "negative_prompt"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); generate(); }
    });
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", showMode));
  $("interrupt").addEventListener("click", () => api("/sdapi/v1/interrupt", {}));
  $("cancel").addEventListener("click", () => state.controller?.abort());
  $("random-seed").addEventListener("click", () => { $("seed").value = -1; });
  $("reuse-seed").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
  $("add-lora").addEventListener("click", () => {
    $("prompt").value = `${$("prompt").value.trimEnd()} <lora:${$("lora").value}:${$("lora_weight").value}>`.trimStart();
  });
  $("init_image").addEventListener("change", (e) => e.target.files[0] && setInitImage(e.target.files[0]));
  $("cn_image").addEventListener("change", async (e) => {
    if (e.target.files[0]) state.controlImage = await asDataUrl(e.target.files[0]);
  });
  $("png_file").addEventListener("change", async (e) => {
    if (e.target.files[0]) await readParameters(await asDataUrl(e.target.files[0]));
  });
  $("clear-mask").addEventListener("click", () => {
    const canvas = $("mask-canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    state.maskPainted = false;
  });
  const mask = $("mask-canvas");
  mask.addEventListener("pointerdown", (e) => { e.preventDefault(); mask.setPointerCapture(e.pointerId); paint(e); });
  mask.addEventListener("pointermove", (e) => { if (e.buttons & 1) paint(e); });
  bindDrop();
  showMode();
}

function bindDrop() {
  // a PNG dropped on the page: its parameters fill the form; an image dropped on the input image box: the input
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (!file) return;
    if ($("image-inputs").contains(e.target)) await setInitImage(file);
    else await readParameters(await asDataUrl(file));
  });
}

start();
