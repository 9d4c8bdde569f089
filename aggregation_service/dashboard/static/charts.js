"use strict";
// Two small SVG charts for the dashboard, drawn with DOM calls only (the
// page's Content-Security-Policy allows no inline code or style):
//   FedgeCharts.line(svg, [{x, y, live}], {cls, min, max, empty})
//   FedgeCharts.bars(svg, labels, values, {empty})
// Each point is a <circle data-version data-value> with a <title> tooltip.
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const M = { l: 52, r: 14, t: 12, b: 30 };

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function size(svg) {
    const vb = svg.viewBox.baseVal;
    return { w: vb.width, h: vb.height };
  }

  function fmt(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000 || a < 0.01) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }

  function empty(svg, message) {
    const { w, h } = size(svg);
    svg.appendChild(el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, message));
  }

  function line(svg, points, opts) {
    opts = opts || {};
    clear(svg);
    if (!points.length) {
      empty(svg, opts.empty || "no data yet");
      return;
    }
    const { w, h } = size(svg);
    const xs = points.map((p) => p.x);
    const ys = points.map((p) => p.y);
    let ymin = Math.min(...ys);
    let ymax = Math.max(...ys);
    if (opts.min !== undefined) ymin = Math.min(ymin, opts.min);
    if (opts.max !== undefined) ymax = Math.max(ymax, opts.max);
    if (ymax === ymin) {
      const pad = Math.abs(ymax) * 0.1 || 1;
      ymin -= pad;
      ymax += pad;
    }
    const xmin = Math.min(...xs);
    const xmax = Math.max(...xs);
    const iw = w - M.l - M.r;
    const ih = h - M.t - M.b;
    const sx = (x) => M.l + (xmax === xmin ? iw / 2 : ((x - xmin) / (xmax - xmin)) * iw);
    const sy = (y) => M.t + ih - ((y - ymin) / (ymax - ymin)) * ih;

    svg.appendChild(el("line", { x1: M.l, y1: M.t, x2: M.l, y2: M.t + ih, class: "axis" }));
    svg.appendChild(el("line", { x1: M.l, y1: M.t + ih, x2: M.l + iw, y2: M.t + ih, class: "axis" }));
    for (const v of [ymin, (ymin + ymax) / 2, ymax]) {
      svg.appendChild(el("text", { x: M.l - 6, y: sy(v) + 4, "text-anchor": "end" }, fmt(v)));
      svg.appendChild(el("line", { x1: M.l, y1: sy(v), x2: M.l + iw, y2: sy(v), class: "axis" }));
    }
    // Label every version while they fit, then about eight of them.
    const step = Math.max(1, Math.ceil(xs.length / 8));
    xs.forEach((x, i) => {
      if (i % step === 0 || i === xs.length - 1) {
        svg.appendChild(el("text", { x: sx(x), y: h - 10, "text-anchor": "middle" }, "v" + x));
      }
    });
    const d = points.map((p, i) => (i ? "L" : "M") + sx(p.x).toFixed(1) + " " + sy(p.y).toFixed(1));
    svg.appendChild(el("path", { d: d.join(" "), class: "line " + (opts.cls || "") }));
    for (const p of points) {
      const c = el("circle", {
        cx: sx(p.x).toFixed(1),
        cy: sy(p.y).toFixed(1),
        r: 4,
        class: (opts.cls || "") + (p.live ? " live" : ""),
        "data-version": p.x,
        "data-value": p.y,
      });
      c.appendChild(el("title", {}, "v" + p.x + ": " + fmt(p.y) + (p.live ? " (live)" : "")));
      svg.appendChild(c);
    }
  }

  function bars(svg, labels, values, opts) {
    opts = opts || {};
    clear(svg);
    const total = values.reduce((a, b) => a + b, 0);
    if (!total) {
      empty(svg, opts.empty || "nothing counted yet");
      return;
    }
    const { w, h } = size(svg);
    const iw = w - M.l - M.r;
    const ih = h - M.t - M.b;
    const top = Math.max(...values);
    const slot = iw / values.length;
    svg.appendChild(el("line", { x1: M.l, y1: M.t + ih, x2: M.l + iw, y2: M.t + ih, class: "axis" }));
    values.forEach((v, i) => {
      const bh = (v / top) * (ih - 14);
      const x = M.l + i * slot + slot * 0.15;
      const bar = el("rect", { x, y: M.t + ih - bh, width: slot * 0.7, height: bh, class: "bar", "data-count": v });
      bar.appendChild(el("title", {}, labels[i] + ": " + v));
      svg.appendChild(bar);
      if (v) svg.appendChild(el("text", { x: x + slot * 0.35, y: M.t + ih - bh - 3, "text-anchor": "middle" }, String(v)));
      svg.appendChild(el("text", { x: x + slot * 0.35, y: h - 10, "text-anchor": "middle" }, labels[i]));
    });
  }

  window.FedgeCharts = { line, bars };
})();
