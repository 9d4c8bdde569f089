"use strict";
// The dashboard page: polls GET /dashboard/api/state every 2 s and redraws;
// the controls POST to /dashboard/api/models/{model}/… with the session's
// CSRF token (from the page's <meta>) after a confirmation dialog.
(function () {
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 30000; // a background tab keeps its session alive and little else
  const csrf = document.querySelector('meta[name="fedge-csrf"]').content;
  const $ = (id) => document.getElementById(id);
  let selected = null;
  let latest = null;
  let timer = null;
  const drawn = {}; // section → the data it was last drawn from (skip identical redraws)

  // --- formatting --------------------------------------------------------------------------
  function num(v, digits) {
    if (v === null || v === undefined) return "–";
    if (Number.isInteger(v)) return v.toLocaleString("en");
    return Number(v.toFixed(digits === undefined ? 4 : digits)).toString();
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString("en-GB") : "–";
  }
  function sum(obj) {
    return Object.values(obj || {}).reduce((a, b) => a + b, 0);
  }
  function node(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function changed(section, data) {
    const key = JSON.stringify(data);
    if (drawn[section] === key) return false;
    drawn[section] = key;
    return true;
  }
  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v, id] of pairs) {
      dl.appendChild(node("dt", k));
      const dd = node("dd", v);
      if (id) dd.dataset.testid = id;
      dl.appendChild(dd);
    }
  }
  function rows(table, entries, empty) {
    const body = table.tBodies[0];
    body.replaceChildren();
    if (!entries.length) {
      const tr = node("tr");
      tr.appendChild(node("td", empty || "none", "muted"));
      body.appendChild(tr);
      return;
    }
    for (const [k, v] of entries) {
      const tr = node("tr");
      tr.dataset.key = k;
      tr.appendChild(node("td", k === "" ? "(none)" : k));
      tr.appendChild(node("td", num(v)));
      body.appendChild(tr);
    }
  }
  function sorted(obj) {
    return Object.entries(obj || {}).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  }
  function setStatus(message, kind) {
    const s = $("status");
    s.textContent = message;
    s.className = kind || "";
  }

  // --- server calls ------------------------------------------------------------------------
  async function call(method, path, body) {
    const init = { method, headers: { "X-Fedge-CSRF": csrf }, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      window.location.assign("/"); // the session ended: back to the login form
      throw new Error("session ended");
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error((data && data.error && data.error.detail) || "HTTP " + response.status);
    }
    return data;
  }

  async function poll() {
    clearTimeout(timer);
    try {
      latest = await call("GET", "/dashboard/api/state");
      render(latest);
    } catch (e) {
      const h = $("health");
      h.textContent = "unreachable";
      h.className = "pill bad";
    }
    timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  function confirmWith(message) {
    return new Promise((resolve) => {
      const dialog = $("confirm");
      $("confirm-text").textContent = message;
      dialog.returnValue = "";
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function act(message, action, body, done) {
    if (!selected || !(await confirmWith(message))) return;
    const path = "/dashboard/api/models/" + encodeURIComponent(selected) + "/" + action;
    try {
      await call("POST", path, body);
      setStatus(done, "ok");
    } catch (e) {
      setStatus(e.message, "error");
    }
    await poll();
  }

  // --- drawing -----------------------------------------------------------------------------
  function render(state) {
    const health = $("health");
    health.textContent = state.health.status;
    health.className = "pill " + (state.health.status === "ok" ? "ok" : "bad");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");

    const names = state.models.map((m) => m.model);
    if (!names.includes(selected)) selected = names.length ? names[0] : null;
    if (changed("select", names)) {
      const select = $("model-select");
      select.replaceChildren(...names.map((n) => { const o = node("option", n); o.value = n; return o; }));
      select.value = selected || "";
    }
    const model = state.models.find((m) => m.model === selected) || null;
    renderModel(model, state.counters);
    renderCounters(state.counters, model);
    renderDevices(state.devices);
  }

  function renderModel(model, counters) {
    $("model-name").textContent = model ? model.model : "(none pushed yet)";
    $("pause").hidden = !model || model.paused;
    $("resume").hidden = !model || !model.paused;
    $("rollback").hidden = !model;
    if (!model) {
      facts($("model-facts"), [["models", "none yet: push one with fedge push"]]);
      $("privacy-card").hidden = true;
      if (changed("charts", null)) {
        FedgeCharts.line($("chart-accuracy"), [], { empty: "no model yet" });
        FedgeCharts.line($("chart-loss"), [], { empty: "no model yet" });
        $("versions").tBodies[0].replaceChildren();
      }
      return;
    }
    const fill = counters.buffer_fill[model.model] || 0;
    const pub = model.publication;
    const modelState = pub && pub.state === "blocked"
      ? "publication blocked: " + pub.detail
      : pub ? "publication retrying: " + pub.detail
      : model.paused ? "paused" : "training";
    facts($("model-facts"), [
      ["state", modelState, "fact-state"],
      ["live version", model.live_version === null ? "none" : "v" + model.live_version, "fact-live"],
      ["training from", "v" + model.training_version, "fact-training"],
      ["mode", model.mode],
      ["buffer", num(fill) + " / " + num(model.buffer.size) + (model.buffer.sealed ? " (+" + model.buffer.sealed + " publishing)" : ""), "fact-buffer"],
      ["open assignments", num(model.outstanding_assignments)],
      ["updates folded in", num(model.num_updates)],
      ["devices reported (≤ 30 s behind)", num(model.num_devices)],
      ["rounds abandoned", num(model.rounds_abandoned)],
    ]);

    const versions = model.versions;
    if (changed("charts", [model.model, model.live_version, versions.map((v) => [v.version, v.metrics])])) {
      const point = (key) => versions
        .filter((v) => v.metrics && typeof v.metrics[key] === "number")
        .map((v) => ({ x: v.version, y: v.metrics[key], live: v.version === model.live_version }));
      FedgeCharts.line($("chart-accuracy"), point("accuracy"), { min: 0, max: 1, empty: "no evaluated version yet (PUT eval-data)" });
      FedgeCharts.line($("chart-loss"), point("loss"), { cls: "loss", min: 0, empty: "no evaluated version yet (PUT eval-data)" });
    }
    if (changed("versions", [model.model, model.live_version, model.training_version, versions])) {
      drawVersions(model);
    }
    drawPrivacy(model);
  }

  function drawVersions(model) {
    const body = $("versions").tBodies[0];
    body.replaceChildren();
    for (const v of [...model.versions].reverse()) {
      const tr = node("tr");
      tr.dataset.version = v.version;
      if (v.version === model.live_version) tr.classList.add("live");
      if (v.version === model.training_version) tr.classList.add("training");
      const m = v.metrics || {};
      const p = v.privacy;
      const cells = [
        "v" + v.version,
        v.base_version ? "v" + v.base_version : "–",
        v.kind,
        num(v.num_updates),
        num(v.num_devices),
        v.mean_staleness === null || v.mean_staleness === undefined ? "–" : num(v.mean_staleness, 2),
        num(m.accuracy),
        num(m.loss),
        p ? num(p.step_epsilon, 3) + " / " + num(p.epsilon, 3) : "–",
        when(v.created_at),
      ];
      cells.forEach((c, i) => {
        const td = node("td", c);
        if (i === 6) td.dataset.testid = "accuracy";
        tr.appendChild(td);
      });
      const td = node("td");
      if (v.version !== model.live_version) {
        const b = node("button", "Promote", "small");
        b.dataset.testid = "promote-" + v.version;
        b.addEventListener("click", () => act(
          "Promote v" + v.version + " of " + model.model + "? Devices will use it for inference.",
          "promote", { version: v.version }, "v" + v.version + " is live"));
        td.appendChild(b);
      } else {
        td.appendChild(node("span", "live", "muted"));
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function drawPrivacy(model) {
    const points = model.versions
      .filter((v) => v.privacy && typeof v.privacy.epsilon === "number")
      .map((v) => ({ x: v.version, y: v.privacy.epsilon, live: v.version === model.live_version }));
    const card = $("privacy-card");
    const dpOn = Boolean(model.privacy) || points.length > 0;
    card.hidden = !dpOn;
    if (!dpOn || !changed("privacy", [model.model, model.privacy, points])) return;
    const p = model.privacy;
    $("privacy-summary").textContent = p
      ? "Training lineage (v" + model.training_version + "): ε = " + num(p.epsilon, 3) + " at δ = " + p.delta +
        " after " + p.steps + " steps; noise multiplier " + num(p.noise_multiplier, 3) + ", " + p.participation + " participation."
      : "ε = ∞: clipping without noise gives no DP guarantee.";
    FedgeCharts.line($("chart-epsilon"), points, { cls: "epsilon", min: 0, empty: "no finite ε (noise multiplier 0)" });
  }

  function renderCounters(c, model) {
    if (!changed("counters", [c, model && model.model])) return;
    const name = model ? model.model : null;
    const pick = (obj) => (name ? obj[name] || 0 : sum(obj));
    facts($("updates"), [
      ["accepted", num(pick(c.accepted)), "accepted"],
      ["duplicates answered", num(pick(c.duplicate))],
      ["rejected (all models)", num(sum(c.rejected)), "rejected-total"],
      ["quarantined (robust)", num(sum(c.quarantined))],
      ["throttled", num(pick(c.throttled))],
      ["discarded", num(pick(c.discarded))],
      ["versions published", num(pick(c.published)), "published"],
      ["DP ε (last publish)", name && name in c.dp_epsilon ? num(c.dp_epsilon[name], 3) : "DP off"],
    ]);
    rows($("rejected"), sorted(c.rejected), "nothing rejected");
    FedgeCharts.bars($("chart-staleness"), c.staleness.labels, c.staleness.counts, { empty: "no update accepted yet" });
    facts($("traffic"), [
      ["bytes in", bytes(c.bytes_in.total), "bytes-in"],
      ["updates in", bytes(c.bytes_in.by_route["/v1/devices/updates"] || 0)],
      ["bytes out", bytes(c.bytes_out.total), "bytes-out"],
      ["rate-limited requests", num(c.rate_limited)],
      ["dashboard logins", num(c.logins.ok || 0) + " ok, " + num(c.logins.wrong_token || 0) + " refused"],
    ]);
    const checkins = sorted(c.checkins).concat(sorted(c.wait_reasons).map(([k, v]) => ["wait: " + k, v]));
    rows($("checkins"), checkins, "no check-in yet");
  }

  function renderDevices(d) {
    if (!changed("devices", d)) return;
    rows($("devices-state"), sorted(d.by_state), "no device enrolled");
    rows($("devices-profile"), sorted(d.by_profile), "no device enrolled");
  }

  // --- wiring ------------------------------------------------------------------------------
  $("model-select").addEventListener("change", (e) => {
    selected = e.target.value;
    for (const k of Object.keys(drawn)) delete drawn[k];
    if (latest) render(latest);
  });
  $("pause").addEventListener("click", () =>
    act("Pause training of " + selected + "? Devices get no plans and no version is published until you resume.",
      "pause", undefined, selected + " paused"));
  $("resume").addEventListener("click", () =>
    act("Resume training of " + selected + "?", "resume", undefined, selected + " resumed"));
  $("rollback").addEventListener("click", () =>
    act("Roll " + selected + " back to the version live before the last promotion? The open buffer is dropped and training continues from it.",
      "rollback", undefined, selected + " rolled back"));
  $("revoke-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("revoke-id").value.trim();
    if (!id || !(await confirmWith("Revoke device " + id + "? Its token stops working at once; its open plans are freed. It can only enroll again with a new enrollment token."))) return;
    try {
      const answer = await call("POST", "/dashboard/api/devices/" + encodeURIComponent(id) + "/revoke");
      setStatus(id + " revoked (" + answer.assignments_freed + " open plans freed)", "ok");
      $("revoke-id").value = "";
    } catch (err) {
      setStatus(err.message, "error");
    }
    await poll();
  });
  $("logout").addEventListener("click", async () => {
    try { await call("POST", "/logout"); } catch (e) { /* already logged out */ }
    window.location.assign("/");
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll(); // back in view: fresh numbers at once
  });
  poll();
})();
