// Start a job, poll its state with fetch() until it ends, and offer to cancel it.
"use strict";

const POLL_MS = 200;
const form = document.getElementById("start-form");
const startButton = document.getElementById("start");
const cancelButton = document.getElementById("cancel");
const bar = document.getElementById("progress");
const statusLine = document.getElementById("status");
const resultLine = document.getElementById("result");
let jobId = null;

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
    throw new Error(data.error || `${method} ${url}: HTTP ${response.status}`);
  }
  return data;
}

function render(job) {
  if (Array.isArray(job.progress)) {
    const [done, total] = job.progress;
    bar.max = total;
    bar.value = done;
  }
  const steps = Array.isArray(job.progress) ? ` (${job.progress[0]}/${job.progress[1]})` : "";
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
      showStatus("failed", `Failed: ${job.error.type}: ${job.error.message}`);
      break;
    case "cancelled":
      showStatus("cancelled", `Cancelled${steps}`);
      break;
  }
}

function finished(status) {
  return status === "succeeded" || status === "failed" || status === "cancelled";
}

async function poll(id) {
  while (id === jobId) {
    let job;
    try {
      job = await requestJSON("GET", `/jobs/${id}`);
    } catch (err) {
      showStatus("error", `Error: ${err.message}`);
      break;
    }
    if (id !== jobId) return; // a newer job has started
    render(job);
    if (finished(job.status)) break;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  if (id === jobId) {
    startButton.disabled = false;
    cancelButton.disabled = true;
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  startButton.disabled = true;
  bar.value = 0;
  showResult(null);
  showStatus("submitting", "Submitting…");
  try {
    const { id } = await requestJSON("POST", "/jobs", { steps: Number(form.steps.value) });
    jobId = id;
  } catch (err) {
    showStatus("error", `Error: ${err.message}`);
    startButton.disabled = false;
    return;
  }
  cancelButton.disabled = false;
  poll(jobId);
});

cancelButton.addEventListener("click", async () => {
  if (jobId === null) return;
  cancelButton.disabled = true;
  try {
    await requestJSON("POST", `/jobs/${jobId}/cancel`);
  } catch (err) {
    showStatus("error", `Error: ${err.message}`);
  }
});
