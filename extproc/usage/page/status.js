// The status page: /status.json every 5 s, drawn as tables and stacked-bar charts (plain SVG, nothing loaded
// from elsewhere). Names come from the gateway's settings and clients: always set as text, never as HTML.
"use strict";

const COLOURS = ["#3566d6", "#e07b16", "#2e9d5b", "#c4320a", "#8a4fd0", "#0f8ea8", "#b5870b", "#d04f91", "#5b6b7f"];
const SVG = "http://www.w3.org/2000/svg";

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  for (const values of rows) {
    const row = body.insertRow();
    for (const value of values) {
      if (Array.isArray(value)) cell(row, value[0], value[1]);
      else cell(row, value == null ? "" : String(value));
    }
  }
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${s % 60}s`;
}

function chart(id, minutes, series, field) {
  const svg = document.getElementById(id);
  const legend = document.getElementById(`legend-${id}`);
  svg.replaceChildren();
  legend.replaceChildren();
  const width = 600, height = 160, left = 44, bottom = 16;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const names = Object.keys(series).sort();
  const totals = minutes.map((_, i) => names.reduce((sum, name) => sum + series[name][field][i], 0));
  const top = Math.max(1, ...totals);
  const step = (width - left) / minutes.length;
  const scale = (height - bottom - 4) / top;
  const label = (x, y, text, anchor) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("text-anchor", anchor || "start");
    t.textContent = text;
    svg.appendChild(t);
  };
  label(left - 4, 10, top.toLocaleString(), "end");
  label(left - 4, height - bottom, "0", "end");
  label(left, height - 2, new Date(minutes[0] * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}));
  label(width, height - 2, "now", "end");
  const axis = document.createElementNS(SVG, "line");
  axis.setAttribute("x1", left); axis.setAttribute("x2", width);
  axis.setAttribute("y1", height - bottom); axis.setAttribute("y2", height - bottom);
  axis.setAttribute("stroke", "#ccd");
  svg.appendChild(axis);
  names.forEach((name, n) => {
    const colour = COLOURS[n % COLOURS.length];
    const item = document.createElement("li");
    item.style.setProperty("--c", colour);
    item.textContent = `${name}: ${series[name][field].reduce((a, b) => a + b, 0).toLocaleString()}`;
    legend.appendChild(item);
  });
  minutes.forEach((_, i) => {
    let y = height - bottom;
    names.forEach((name, n) => {
      const value = series[name][field][i];
      if (!value) return;
      const h = value * scale;
      y -= h;
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", left + i * step + 1);
      bar.setAttribute("y", y);
      bar.setAttribute("width", Math.max(1, step - 2));
      bar.setAttribute("height", h);
      bar.setAttribute("fill", COLOURS[n % COLOURS.length]);
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${name}: ${value.toLocaleString()}`;
      bar.appendChild(tip);
      svg.appendChild(bar);
    });
  });
}

function render(status) {
  const workers = status.workers;
  document.getElementById("summary").textContent =
    `version ${status.version} · up ${duration(status.uptime_s)} · ext_proc workers ${workers.up}/${workers.configured} · ` +
    `${status.totals.requests.toLocaleString()} requests, ${status.totals.tokens.toLocaleString()} tokens since start`;
  fill("backends", status.backends.map(b => [b.name, b.endpoint || "(none)", b.type, b.auth]));
  const pools = Object.entries(status.pools);
  const pooled = Object.values(status.models).some(target => target.startsWith("pool of"));
  document.getElementById("pools-section").hidden = !pooled;
  const poolRows = [];
  for (const [model, members] of pools) {
    for (const m of members) {
      const state = m.state === "tripped" ? `tripped, ${Math.ceil(m.seconds_left)} s left` : m.state;
      poolRows.push([model, `${m.backend}/${m.deployment}`, m.priority, m.weight, [state, `state-${m.state}`], m.trips || 0, m.failures || 0]);
    }
  }
  if (pooled && !status.breaker_reachable) {
    poolRows.push(["", "the circuit breaker does not answer", "", "", ["unknown", "state-tripped"], "", ""]);
  }
  fill("pools", poolRows);
  const history = status.history;
  chart("requests-by-model", history.minutes, history.models, "requests");
  chart("tokens-by-model", history.minutes, history.models, "tokens");
  chart("requests-by-client", history.minutes, history.clients, "requests");
  chart("tokens-by-client", history.minutes, history.clients, "tokens");
  document.getElementById("clients-section").hidden = status.clients.length === 0;
  fill("clients", status.clients.map(c => {
    const left = c.remaining || {};
    const blocked = c.blocked_until && c.blocked_until > status.now;
    return [c.name, c.requests_per_minute ?? "no limit",
            c.tokens_per_minute ? `${(left.minute ?? 0).toLocaleString()} of ${c.tokens_per_minute.toLocaleString()}` : "no limit",
            c.tokens_per_day ? `${(left.day ?? 0).toLocaleString()} of ${c.tokens_per_day.toLocaleString()}` : "no limit",
            blocked ? [`refused for ${Math.ceil(c.blocked_until - status.now)} s`, "state-tripped"] : ["serving", "state-closed"]];
  }));
  document.body.dataset.loaded = "true";
}

async function refresh() {
  try {
    const response = await fetch("/status.json", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    document.getElementById("summary").textContent = `cannot read the gateway's status: ${error.message}`;
  }
}

refresh();
setInterval(refresh, 5000);
