// protloc expert study page: sign in, answer one sample at a time, zoom/pan the four views.
// All URLs are relative, so the page works at "/" and mounted under a prefix ("/expert/").
"use strict";

const state = { session: null, position: 0, item: null, busy: false, view: { scale: 1, x: 0, y: 0 }, natural: null,
  cells: localStorage.getItem("protloc-expert-cells") === "1" };
const $ = (id) => document.getElementById(id);
// While a sample loads or an answer is being saved, keys and clicks are ignored: an answer must never
// land on a sample other than the one on screen. body[data-busy] tells tests (and styles) when.
function setBusy(busy) { state.busy = busy; document.body.dataset.busy = busy ? "1" : "0"; }

async function api(method, url, body) {
  const response = await fetch(url, {
    method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) { showSignIn(); throw new Error("not signed in"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : response.statusText);
  return data;
}

function showSignIn() {
  $("study-view").hidden = true; $("who").hidden = true; $("signin-view").hidden = false;
  $("name").focus();
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").style.color = error ? "#f77" : "#8f8";
}

async function start(session) {
  state.session = session;
  $("signin-view").hidden = true; $("study-view").hidden = false; $("who").hidden = false;
  $("expert-name").textContent = session.expert;
  buildAnswerButtons(session.classes);
  const key = session.cells_key;
  $("cells-toggle").innerHTML = (key ? `<kbd>${key}</kbd> ` : "") + "Cell outlines";
  $("cells-hint").textContent = key ? ` · ${key}: cell outlines` : "";
  setBusy(true);
  try { await show(session.resume); } finally { setBusy(false); }
  if (session.done) setStatus(`All ${session.total} samples answered — thank you. You can still go back and change answers.`);
}

function buildAnswerButtons(classes) {
  const box = $("answers");
  box.replaceChildren();
  for (const cls of classes) {
    const button = document.createElement("button");
    button.type = "button"; button.dataset.label = cls.name;
    button.innerHTML = (cls.key ? `<kbd>${cls.key}</kbd> ` : "") + cls.name.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    button.addEventListener("click", () => answer(cls.name));
    box.appendChild(button);
  }
}

function renderProgress() {
  const s = state.session;
  $("progress").textContent = `Sample ${state.position + 1} of ${s.total} · ${s.answered} answered`;
  document.body.dataset.position = String(state.position);
  $("prev").disabled = state.position <= 0;
  $("next").disabled = state.position >= s.total - 1;
  for (const button of $("answers").children) {
    const chosen = state.item && button.dataset.label === state.item.answer;
    button.classList.toggle("chosen", chosen);
    button.setAttribute("aria-pressed", chosen ? "true" : "false");
  }
}

async function show(position) {
  const item = await api("GET", `api/items/${position}`);
  state.position = position; state.item = item;
  const box = $("views");
  box.replaceChildren();
  state.natural = null;
  for (const view of item.views) {
    const frame = document.createElement("div");
    frame.className = "view"; frame.dataset.view = view.name;
    const label = document.createElement("span"); label.className = "label"; label.textContent = view.title;
    const img = document.createElement("img"); img.alt = view.title; img.draggable = false; img.src = view.url;
    img.addEventListener("load", () => { if (!state.natural) { state.natural = [img.naturalWidth, img.naturalHeight]; fitView(); } });
    frame.append(label, img);
    attachZoomPan(frame);
    box.appendChild(frame);
  }
  showCells();
  renderProgress();
  document.body.dataset.ready = "1";
}

// One transform for all four views: what you zoom into in one, you see in all.
function applyView() {
  const { scale, x, y } = state.view;
  for (const img of document.querySelectorAll(".view img")) img.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
}

function fitView() {
  const frame = document.querySelector(".view");
  if (!frame || !state.natural) return;
  const [w, h] = state.natural;
  const scale = Math.min(frame.clientWidth / w, frame.clientHeight / h);
  state.view = { scale, x: (frame.clientWidth - w * scale) / 2, y: (frame.clientHeight - h * scale) / 2 };
  applyView();
}

function attachZoomPan(frame) {
  frame.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = frame.getBoundingClientRect();
    const cx = event.clientX - rect.left, cy = event.clientY - rect.top;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const v = state.view;
    const scale = Math.min(64, Math.max(0.05, v.scale * factor));
    const k = scale / v.scale;
    state.view = { scale, x: cx - (cx - v.x) * k, y: cy - (cy - v.y) * k };
    applyView();
  }, { passive: false });
  let drag = null;
  frame.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, vx: state.view.x, vy: state.view.y };
    frame.setPointerCapture(event.pointerId); frame.classList.add("dragging");
  });
  frame.addEventListener("pointermove", (event) => {
    if (!drag) return;
    state.view = { ...state.view, x: drag.vx + event.clientX - drag.x, y: drag.vy + event.clientY - drag.y };
    applyView();
  });
  const end = () => { drag = null; frame.classList.remove("dragging"); };
  frame.addEventListener("pointerup", end);
  frame.addEventListener("pointercancel", end);
  frame.addEventListener("dblclick", fitView);
}

// The cell outlines (segmented on the server, white on transparent) over all four views, under the
// same zoom and pan; on or off for every sample until toggled again, and remembered by the browser.
function showCells() {
  const button = $("cells-toggle");
  button.setAttribute("aria-pressed", state.cells ? "true" : "false");
  button.classList.toggle("chosen", state.cells);
  document.body.dataset.cells = state.cells ? "1" : "0";
  for (const frame of document.querySelectorAll(".view")) {
    let overlay = frame.querySelector("img.cells");
    if (!state.cells || !state.item) { if (overlay) overlay.remove(); continue; }
    if (overlay) continue;
    overlay = document.createElement("img");
    overlay.className = "cells"; overlay.alt = "cell outlines"; overlay.draggable = false;
    overlay.addEventListener("error", () => cellsFailed(overlay));
    overlay.src = state.item.cells;
    frame.appendChild(overlay);
  }
  applyView();
}

async function cellsFailed(overlay) {
  if (overlay.dataset.failed) return;
  for (const img of document.querySelectorAll(".view img.cells")) img.dataset.failed = "1";
  try { await api("GET", overlay.src); } catch (error) { setStatus(`No cell outlines: ${error.message}`, true); }
}

function toggleCells() {
  if (!state.session) return;
  state.cells = !state.cells;
  localStorage.setItem("protloc-expert-cells", state.cells ? "1" : "0");
  showCells();
}

async function answer(label) {
  if (state.busy || !state.session) return;
  setBusy(true);
  const position = state.position;
  try {
    const result = await api("PUT", `api/answers/${position}`, { label });
    state.session = { ...state.session, answered: result.answered, done: result.done };
    state.item.answer = result.label;
    renderProgress();
    setStatus(`Saved: sample ${position + 1} = ${result.label}`);
    if (position < state.session.total - 1) await show(position + 1);
    else if (result.done) setStatus(`Saved. All ${state.session.total} samples answered — thank you.`);
    else { await show(result.resume); setStatus(`Saved. ${state.session.total - result.answered} sample(s) still open: here is the first.`); }
    document.body.dataset.saved = `${position}:${result.label}`;
  } catch (error) {
    setStatus(`Not saved: ${error.message}`, true);
  } finally {
    setBusy(false);
  }
}

async function move(delta) {
  if (state.busy || !state.session) return;
  const target = state.position + delta;
  if (target < 0 || target >= state.session.total) return;
  setBusy(true);
  try { await show(target); setStatus(""); } catch (error) { setStatus(error.message, true); } finally { setBusy(false); }
}

document.addEventListener("keydown", (event) => {
  if ($("study-view").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target instanceof HTMLInputElement) return;
  if (event.key === "ArrowLeft") { event.preventDefault(); move(-1); return; }
  if (event.key === "ArrowRight") { event.preventDefault(); move(1); return; }
  if (event.key === "Escape") { fitView(); return; }
  if (state.session?.cells_key && event.key.toLowerCase() === state.session.cells_key) { event.preventDefault(); toggleCells(); return; }
  const cls = (state.session?.classes || []).find((c) => c.key === event.key.toLowerCase());
  if (cls) { event.preventDefault(); answer(cls.name); }
});

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try { await start(await api("POST", "api/signin", { name: $("name").value })); }
  catch (error) { $("signin-error").textContent = error.message; }
});
$("signout").addEventListener("click", async () => { await api("POST", "api/signout"); state.session = null; showSignIn(); });
$("prev").addEventListener("click", () => move(-1));
$("next").addEventListener("click", () => move(1));
$("cells-toggle").addEventListener("click", toggleCells);
window.addEventListener("resize", fitView);

api("GET", "api/session").then(start).catch(() => {});
