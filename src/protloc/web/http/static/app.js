// protloc pages: drag-and-drop upload with channel inference, progress, polling. No build step.
"use strict";
const protloc = (() => {
  const COLOURS = { blue: "nucleus", red: "microtubules", yellow: "er", green: "protein" };
  const $ = (id) => document.getElementById(id);

  function channelOf(name) {
    const stem = name.toLowerCase().replace(/\.(tiff?|png|jpe?g|npz)$/, "");
    const token = stem.split(/[_-]/).pop();
    if (token in COLOURS) return COLOURS[token];
    if (Object.values(COLOURS).includes(token)) return token;
    return "";
  }

  function showError(el, message) {
    el.textContent = message;
    el.hidden = !message;
  }

  async function reasonOf(response) {
    try { const body = await response.json(); return body.detail || response.statusText; }
    catch (e) { return response.statusText || ("HTTP " + response.status); }
  }

  // XMLHttpRequest rather than fetch: it reports upload progress.
  function postForm(url, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.responseType = "json";
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
        else reject(new Error((xhr.response && xhr.response.detail) || ("HTTP " + xhr.status)));
      };
      xhr.onerror = () => reject(new Error("the server could not be reached"));
      xhr.send(form);
    });
  }

  function setProgress(fill, text, fraction, message) {
    fill.style.width = Math.round(fraction * 100) + "%";
    text.textContent = message;
  }

  function initUpload(channels) {
    let files = [];
    const zone = $("drop-zone"), input = $("file-input"), table = $("file-table");
    const body = table.querySelector("tbody"), button = $("submit-button"), error = $("upload-error");

    function render() {
      body.innerHTML = "";
      files.forEach((item, index) => {
        const row = document.createElement("tr");
        const name = document.createElement("td"); name.textContent = item.file.name;
        const size = document.createElement("td"); size.textContent = (item.file.size / 1024).toFixed(1) + " KB";
        const cell = document.createElement("td");
        if (files.length === 1) {
          cell.textContent = "all four (multi-channel file)";
        } else {
          const select = document.createElement("select");
          select.className = "channel-select";
          select.setAttribute("aria-label", "channel of " + item.file.name);
          select.innerHTML = '<option value="">? choose</option>' +
            channels.map((c) => `<option value="${c}">${c}</option>`).join("");
          select.value = item.channel;
          select.addEventListener("change", () => { item.channel = select.value; validate(); });
          cell.appendChild(select);
        }
        const remove = document.createElement("td");
        const x = document.createElement("button"); x.type = "button"; x.textContent = "remove"; x.className = "link";
        x.addEventListener("click", () => { files.splice(index, 1); render(); });
        remove.appendChild(x);
        row.append(name, size, cell, remove);
        body.appendChild(row);
      });
      table.hidden = files.length === 0;
      validate();
    }

    function validate() {
      let message = "";
      if (files.length === 0) message = "";
      else if (files.length !== 1 && files.length !== channels.length)
        message = `Give ${channels.length} channel files or one multi-channel file (you gave ${files.length}).`;
      else if (files.length === channels.length) {
        const chosen = files.map((f) => f.channel);
        const missing = channels.filter((c) => !chosen.includes(c));
        if (missing.length) message = "Choose a channel for each file; missing: " + missing.join(", ") + ".";
      }
      showError(error, message);
      button.disabled = files.length === 0 || message !== "";
    }

    function add(list) {
      for (const file of list) files.push({ file, channel: channelOf(file.name) });
      render();
    }

    input.addEventListener("change", () => { add(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
      e.preventDefault(); zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, (e) => {
      e.preventDefault(); zone.classList.remove("over");
    }));
    zone.addEventListener("drop", (e) => add(e.dataTransfer.files));

    $("upload-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const form = new FormData();
      form.append("model", $("model").value);
      for (const item of files) {
        form.append("files", item.file, item.file.name);
        if (files.length > 1) form.append("channels", item.channel);
      }
      const fill = $("progress-fill"), text = $("progress-text");
      $("progress").hidden = false; button.disabled = true; showError(error, "");
      try {
        const created = await postForm("/api/v1/predictions", form,
          (f) => setProgress(fill, text, f * 0.5, `uploading… ${Math.round(f * 100)}%`));
        setProgress(fill, text, 0.6, "queued for prediction…");
        await waitFor(created.id, (status) =>
          setProgress(fill, text, status === "running" ? 0.8 : 0.6, status + "…"));
        setProgress(fill, text, 1, "done");
        window.location.href = "/submissions/" + created.id;
      } catch (err) {
        $("progress").hidden = true; showError(error, err.message); button.disabled = false;
      }
    });

    $("batch-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const zip = $("batch-input").files[0], batchError = $("batch-error");
      if (!zip) { showError(batchError, "Choose a zip file first."); return; }
      const form = new FormData();
      form.append("model", $("model").value);
      form.append("file", zip, zip.name);
      $("batch-progress").hidden = false; showError(batchError, "");
      try {
        const created = await postForm("/api/v1/batches", form,
          (f) => setProgress($("batch-fill"), $("batch-text"), f, `uploading… ${Math.round(f * 100)}%`));
        window.location.href = "/batches/" + created.id;
      } catch (err) {
        $("batch-progress").hidden = true; showError(batchError, err.message);
      }
    });
  }

  async function waitFor(id, onStatus) {
    for (;;) {
      // A long poll: the server answers as soon as the submission is finished (or after 20 s).
      const response = await fetch("/api/v1/predictions/" + id + "?wait=20");
      if (!response.ok) throw new Error(await reasonOf(response));
      const data = await response.json();
      if (data.status === "done") return data;
      if (data.status === "failed") throw new Error("prediction failed: " + data.error);
      onStatus(data.status);
    }
  }

  function pollSubmission(id) {
    waitFor(id, (status) => { const el = $("status"); if (el) el.textContent = status; })
      .then(() => window.location.reload())
      .catch(() => window.location.reload());
  }

  // A finished submission's pictures are drawn after its probabilities: each figure says "drawing…"
  // until its picture arrives, and asks again a few times when the server could not draw it yet.
  function watchPictures() {
    for (const img of document.querySelectorAll("figure.picture img")) {
      const figure = img.closest("figure");
      if (img.complete && img.naturalWidth > 0) continue;
      figure.classList.add("drawing");
      let tries = 0;
      img.addEventListener("load", () => figure.classList.remove("drawing", "unavailable"));
      img.addEventListener("error", () => {
        if (++tries > 5) { figure.classList.remove("drawing"); figure.classList.add("unavailable"); return; }
        setTimeout(() => { const url = new URL(img.src); url.searchParams.set("try", tries); img.src = url; }, 1500);
      });
    }
  }

  async function pollBatch(id) {
    for (;;) {
      const response = await fetch("/api/v1/batches/" + id + "?limit=1000");  // the first 1000 of each list
      if (!response.ok) return;
      const b = await response.json();
      const finished = b.done + b.failed;
      const total = Math.max(b.total, b.submitted, 1);
      $("batch-fill").style.width = Math.round((finished / total) * 100) + "%";
      $("batch-summary").textContent =
        `${b.status}: ${b.done} done, ${b.failed} failed, ${b.pending} waiting of ${b.total || b.submitted} samples` +
        (b.skipped_total ? `, ${b.skipped_total} skipped` : "");
      showError($("batch-error"), b.error || "");
      $("batch-rows").innerHTML = b.submissions.map((s) =>
        `<tr><td><a href="/submissions/${s.id}">${escapeHtml(s.name)}</a></td><td class="status ${s.status}">${s.status}</td>` +
        `<td>${(s.predicted || []).map((c) => `<span class="tag">${escapeHtml(c)}</span>`).join("")}</td>` +
        `<td class="cells-count">${s.cells ?? ""}</td></tr>`).join("");
      $("batch-skipped").innerHTML = b.skipped.map((s) => `<li>${escapeHtml(s.name)}: ${escapeHtml(s.reason)}</li>`).join("") || "<li>none</li>";
      if (b.status === "finished" || b.status === "failed") return;
      await new Promise((r) => setTimeout(r, 700));
    }
  }

  // The result page's cells: one selected at a time, in the table (row) and on the picture (shape);
  // the table sorts by any column (numbers as numbers), ascending then descending.
  function initCells() {
    const table = $("cell-table"), shapes = $("cell-shapes");
    if (!table || !shapes) return;
    const body = table.tBodies[0];

    function select(id, from) {
      for (const el of document.querySelectorAll(".cell-row.selected, .cell-shape.selected")) el.classList.remove("selected");
      const row = body.querySelector(`tr[data-cell="${id}"]`), shape = shapes.querySelector(`[data-cell="${id}"]`);
      if (row) { row.classList.add("selected"); row.setAttribute("aria-selected", "true"); }
      if (shape) { shape.classList.add("selected"); shapes.appendChild(shape); }  // drawn last: on top
      if (from === "picture" && row) row.scrollIntoView({ block: "nearest" });
      document.body.dataset.selectedCell = id;
    }

    body.addEventListener("click", (e) => { const row = e.target.closest("tr.cell-row"); if (row) select(row.dataset.cell, "table"); });
    body.addEventListener("keydown", (e) => {
      const row = e.target.closest("tr.cell-row");
      if (row && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); select(row.dataset.cell, "table"); }
    });
    shapes.addEventListener("click", (e) => { const shape = e.target.closest(".cell-shape"); if (shape) select(shape.dataset.cell, "picture"); });

    for (const th of table.tHead.rows[0].cells) {
      th.addEventListener("click", () => {
        const descending = th.getAttribute("aria-sort") === "ascending";
        const key = th.dataset.key, numeric = th.dataset.type === "number";
        const value = (row) => (numeric ? parseFloat(row.dataset[key]) : row.dataset[key]);
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = value(a), y = value(b);
          const order = numeric ? x - y : String(x).localeCompare(String(y));
          return (descending ? -order : order) || (parseInt(a.dataset.cell) - parseInt(b.dataset.cell));
        });
        for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        body.append(...rows);
      });
    }
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  return { initUpload, pollSubmission, pollBatch, watchPictures, initCells, channelOf };
})();
