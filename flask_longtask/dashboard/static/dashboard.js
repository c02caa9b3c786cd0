// The Flask-LongTask dashboard's live updates and its two writes. No framework, no CDN.
//
// The server renders every part of a page (the counts, the table, a job); this script swaps in
// new renderings of those parts. It listens to the page's Server-Sent Events stream, which
// sends the parts again whenever they change; if the stream cannot be had (the server answers
// 503, or the browser has no EventSource), it polls the same parts every refresh instead.
// Cancel and purge are POSTs of JSON carrying the page's token (see guard.py).
(function () {
  "use strict";

  function meta(name) {
    var element = document.querySelector('meta[name="' + name + '"]');
    return element ? element.getAttribute("content") : "";
  }

  var token = meta("longtask-csrf");
  var refresh = Math.max(parseFloat(meta("longtask-refresh")) || 1, 0.1) * 1000;
  var root = document.querySelector("[data-stream]");
  var live = document.getElementById("live");
  var FINISHED = { succeeded: true, failed: true, cancelled: true, gone: true };
  var source = null;
  var timer = null;

  function say(text) {
    if (live) live.textContent = text;
  }

  function apply(parts) {
    Object.keys(parts).forEach(function (name) {
      var element = document.querySelector('[data-part="' + name + '"]');
      if (element && typeof parts[name] === "string" && element.innerHTML !== parts[name]) {
        element.innerHTML = parts[name];
      }
    });
    if (parts.status && FINISHED[parts.status]) stop(); // a job that ended changes no more
  }

  function stop() {
    if (source) source.close();
    if (timer) clearTimeout(timer);
    source = timer = null;
    document.body.setAttribute("data-live", "done");
  }

  function look() {
    return fetch(root.getAttribute("data-poll"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
      .then(apply);
  }

  function poll() {
    look().catch(function () {}).then(function () {
      if (document.body.getAttribute("data-live") === "polling") timer = setTimeout(poll, refresh);
    });
  }

  function startPolling() {
    if (source) source.close();
    source = null;
    if (document.body.getAttribute("data-live") === "polling") return;
    document.body.setAttribute("data-live", "polling");
    say("live (polling every " + refresh / 1000 + " s)");
    timer = setTimeout(poll, refresh);
  }

  function start() {
    if (!root) return;
    if (!window.EventSource) return startPolling();
    source = new EventSource(root.getAttribute("data-stream"));
    source.addEventListener("parts", function (event) {
      if (document.body.getAttribute("data-live") !== "stream") {
        document.body.setAttribute("data-live", "stream");
        say("live");
      }
      apply(JSON.parse(event.data));
    });
    source.onerror = function () {
      // CLOSED: the server refused the stream (503: no stream for this page now); otherwise the
      // stream ended and the browser opens another by itself.
      if (source && source.readyState === EventSource.CLOSED) startPolling();
    };
  }

  function post(url) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-LongTask-CSRF": token },
      body: "{}",
    }).then(function (response) {
      return response.json().then(function (data) {
        if (response.ok) return data;
        return Promise.reject((data.error && data.error.message) || String(response.status));
      });
    });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var cancel = target.closest ? target.closest("[data-cancel]") : null;
    if (cancel) {
      cancel.disabled = true;
      post(cancel.getAttribute("data-cancel"))
        .then(function () { say("Cancellation requested."); })
        .catch(function (why) { say("Could not cancel: " + why); cancel.disabled = false; })
        .then(function () { return root ? look() : null; })
        .catch(function () {});
      return;
    }
    var purge = target.closest ? target.closest("[data-purge]") : null;
    if (purge && window.confirm("Delete every finished job: its record, result and progress?")) {
      post(purge.getAttribute("data-purge"))
        .then(function (data) { say("Purged " + data.purged + " finished job(s)."); })
        .catch(function (why) { say("Could not purge: " + why); })
        .then(function () { return root ? look() : null; })
        .catch(function () {});
    }
  });

  var onPage = document.querySelector("[data-part] [data-status]");
  if (onPage && FINISHED[onPage.getAttribute("data-status")] && document.getElementById("job")) {
    document.body.setAttribute("data-live", "done"); // a finished job's page: nothing to follow
  } else {
    start();
  }
})();
