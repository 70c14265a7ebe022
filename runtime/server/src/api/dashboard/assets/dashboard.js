// Kiln's dashboard: run statuses kept live from /events, and the buttons
// that act on a run without leaving its page.
(function () {
  "use strict";
  const FINAL = new Set([
    "COMPLETED", "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE",
    "EXPIRED", "TIMED_OUT",
  ]);

  function setStatus(id, status) {
    for (const el of document.querySelectorAll("[data-run-status]")) {
      if (el.dataset.runStatus !== id || el.textContent === status) continue;
      el.textContent = status;
      el.className = "status s-" + status + " changed";
    }
    if (FINAL.has(status)) {
      for (const form of document.querySelectorAll("form[data-live-action]")) {
        if (form.getAttribute("action") === "/runs/" + id + "/cancel") form.remove();
      }
    }
  }

  if (document.querySelector("[data-run-status]")) {
    const source = new EventSource("/events");
    source.addEventListener("runs", (event) => {
      for (const run of JSON.parse(event.data)) setStatus(run.id, run.status);
    });
    source.addEventListener("refresh", () => location.reload());
    document.documentElement.dataset.live = "connecting";
    source.addEventListener("open", () => {
      document.documentElement.dataset.live = "open";
    });
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.hasAttribute("data-live-action")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, { method: "POST", credentials: "same-origin" });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
    } catch (error) {
      if (button) button.disabled = false;
      alert("That did not work: " + error.message);
    }
  });
})();
