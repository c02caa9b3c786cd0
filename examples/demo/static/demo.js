// Start a job through Flask-LongTask's HTTP API, follow its Server-Sent Events (polling if the
// stream fails), and offer to cancel it.
"use strict";

const main = document.querySelector("main");
const API = main.dataset.api;
const TASK = main.dataset.task;
const form = document.getElementById("start-form");
const startButton = document.getElementById("start");
const cancelButton = document.getElementById("cancel");
const bar = document.getElementById("progress");
const statusLine = document.getElementById("status");
const resultLine = document.getElementById("result");
let jobId = null;
let source = null;

function showStatus(status, text) {
  statusLine.dataset.status = status;
  statusLine.textContent = text;
}

function showResult(text) {
  resultLine.textContent = text;
  resultLine.hidden = text === null;
}

async function requestJSON(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || `${method} ${url}: HTTP ${response.status}`);
  }
  return { data, retryAfter: Number(response.headers.get("Retry-After") || 0) };
}

let steps = "";
function showProgress(progress) {
  if (Array.isArray(progress)) {
    const [done, total] = progress;
    bar.max = total;
    bar.value = done;
    steps = ` (${done}/${total})`;
  }
}

function finished(status) {
  return status === "succeeded" || status === "failed" || status === "cancelled";
}

function render(job) {
  showProgress(job.progress);
  switch (job.status) {
    case "queued":
      showStatus("queued", "Queued: waiting for a worker…");
      break;
    case "running":
      showStatus("running", `Running${steps}`);
      break;
    case "succeeded":
      showStatus("succeeded", `Succeeded${steps}`);
      showResult(`Result: ${JSON.stringify(job.result)}`);
      break;
    case "failed":
      // The message is there only where the app allows it (LONGTASK_HTTP_ERRORS).
      showStatus("failed", `Failed: ${job.error.type}${job.error.message ? `: ${job.error.message}` : ""}`);
      break;
    case "cancelled":
      showStatus("cancelled", `Cancelled${steps}`);
      break;
  }
  if (finished(job.status)) done();
}

function done() {
  if (source) source.close();
  source = null;
  startButton.disabled = false;
  cancelButton.disabled = true;
}

// Live progress: one event per stored progress value, then a final "status" event.
function follow(id) {
  if (!window.EventSource) return poll(id);
  source = new EventSource(`${API}/jobs/${id}/events`);
  let heard = false;
  source.addEventListener("progress", (event) => {
    heard = true;
    main.dataset.transport = "sse";
    if (id !== jobId) return;
    showProgress(JSON.parse(event.data));
    showStatus("running", `Running${steps}`);
  });
  source.addEventListener("status", (event) => {
    main.dataset.transport = "sse";
    if (id === jobId) render(JSON.parse(event.data));
  });
  source.addEventListener("server-error", () => {
    // Reading the job failed on the server: the stream ends; polling shows the job, or the error.
    source.close();
    source = null;
    poll(id);
  });
  source.onerror = () => {
    // The server ends a stream after LONGTASK_SSE_TIMEOUT and the browser reconnects by
    // itself. A stream the server refuses (429 or 503: past its limits on streams, or a job
    // streamed for longer than LONGTASK_SSE_WINDOW) closes the EventSource for good, and one
    // that never worked (a proxy that buffers, say) is no use: both fall back to polling.
    if (source && (!heard || source.readyState === EventSource.CLOSED)) {
      source.close();
      source = null;
      poll(id);
    }
  };
}

async function poll(id) {
  main.dataset.transport = "poll";
  while (id === jobId) {
    let answer;
    try {
      answer = await requestJSON("GET", `${API}/jobs/${id}`);
    } catch (err) {
      showStatus("error", `Error: ${err.message}`);
      return done();
    }
    if (id !== jobId) return;
    render(answer.data);
    if (finished(answer.data.status)) return;
    await new Promise((resolve) => setTimeout(resolve, Math.min(answer.retryAfter * 1000 || 500, 500)));
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  startButton.disabled = true;
  bar.value = 0;
  steps = "";
  showResult(null);
  showStatus("submitting", "Submitting…");
  try {
    const { data } = await requestJSON("POST", `${API}/tasks/${TASK}`, { args: [Number(form.steps.value)] });
    jobId = data.id;
    render(data);
  } catch (err) {
    showStatus("error", `Error: ${err.message}`);
    startButton.disabled = false;
    return;
  }
  if (jobId && startButton.disabled) {
    cancelButton.disabled = false;
    follow(jobId);
  }
});

cancelButton.addEventListener("click", async () => {
  if (jobId === null) return;
  cancelButton.disabled = true;
  try {
    await requestJSON("DELETE", `${API}/jobs/${jobId}`);
  } catch (err) {
    showStatus("error", `Error: ${err.message}`);
  }
});
