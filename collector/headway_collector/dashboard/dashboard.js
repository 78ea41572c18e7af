// The Headway dashboard: plain DOM and SVG over the read API. No build step,
// nothing fetched from elsewhere. The read key comes from the form or from a `#key=...` link
// (a fragment never reaches the server) and is kept in this browser's localStorage.
"use strict";

const NS = "http://www.w3.org/2000/svg";
// The quadrants and statuses the page knows, in the order it shows them. Any other string the
// API answers is shown too (after these, in a neutral colour): a newer collector may add some.
const QUADRANTS = ["new", "thriving", "stuck", "quiet", "at_risk"];
const CLASSIC_QUADRANTS = ["thriving", "stuck", "quiet", "at_risk"]; // always listed, even at 0
const STATUSES = ["achieved", "in_progress", "pending", "lapsed", "missed"];
const $ = (id) => document.getElementById(id);
let key = localStorage.getItem("headway-read-key") || "";
let model = null;

function build(make, tag, attrs, children) {
  const e = make(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
const s = (tag, attrs, ...children) => build((t) => document.createElementNS(NS, t), tag, attrs, children);

// An error answer of the read API: its HTTP status and error code, for views that expect some.
class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const r = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(error.message || `${r.status} ${r.statusText}`, r.status, error.code || "");
  }
  return body;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

const num = (x, digits = 1) => (x === null || x === undefined ? "–" : Number(x).toLocaleString(undefined, { maximumFractionDigits: digits }));
const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
const money = (x) => num(x, 0);
const day = (iso) => (iso ? iso.slice(0, 10) : "–");
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 3600) return `${num(seconds / 60)} min`;
  if (seconds < 86400 * 2) return `${num(seconds / 3600)} h`;
  return `${num(seconds / 86400)} d`;
}
const label = (name) => String(name).replaceAll("_", " ");
// The colour of a quadrant, status or series: its CSS variable, a neutral one for a name the
// stylesheet does not know (or that is no CSS name).
const colour = (name) => (/^[a-z_]+$/.test(name) ? `var(--${name}, var(--other))` : "var(--other)");
// The names to show: the known ones in their order (`always` even when absent from `seen`),
// then any other name seen.
const shown = (known, always, seen) => [...known.filter((n) => always.includes(n) || seen.includes(n)),
  ...seen.filter((n) => !known.includes(n))];
const chip = (text, color) => h("span", { class: "chip", style: `background:${colour(color)}` }, label(text));
// A chart's legend: [text, colour name, how] per series; how "hollow", "dashed" or "line" draws
// the key as the chart draws the series.
function legend(items) {
  return h("p", { class: "legend" }, ...items.map(([text, color, how]) => h("span", {},
    h("i", { class: how || "", style: how === "hollow" ? `border:2px solid ${colour(color)}` : how ? `border-color:${colour(color)}` : `background:${colour(color)}` }), text)));
}
const subjectLink = (level, id) => h("a", { class: "subject", href: `#subject/${level}/${encodeURIComponent(id)}` }, id);

// A stacked bar of [n, color, label, href?] parts; a part with an href links to its subjects.
function bar(parts, total) {
  const b = h("div", { class: "bar" });
  for (const [n, color, label, href] of parts) {
    const style = `width:${(100 * n) / total}%;background:${colour(color)}`;
    if (n > 0) b.append(href ? h("a", { href, style, title: `${label}: ${n}` }) : h("span", { style, title: `${label}: ${n}` }));
  }
  return b;
}

function table(head, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, ...head.map(([label, cls]) => h("th", cls ? { class: cls } : {}, label)))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c, i) => h("td", head[i][1] ? { class: head[i][1] } : {}, c))))));
}

// The model's engaged_threshold; 20 when the model leaves it to the default.
const engagedThreshold = () => (model.engagement && model.engagement.engaged_threshold !== undefined ? model.engagement.engaged_threshold : 20);

// ---- views ----------------------------------------------------------------------------------

// A link to the list view: the subjects of `level` that the read API's filters select.
const listHref = (level, filters) => `#list/${level}/${new URLSearchParams(filters)}`;
const listLink = (level, filters, text) => h("a", { class: "count", href: listHref(level, filters) }, text);

async function showFunnel() {
  const funnel = await api("v1/milestones", { level: $("funnel-level").value });
  const statuses = shown(STATUSES, ["achieved", "in_progress", "pending", "missed"], [...new Set(funnel.milestones.flatMap((m) => Object.keys(m.counts)))]);
  const rows = funnel.milestones.map((m) => {
    const total = statuses.reduce((n, st) => n + (m.counts[st] || 0), 0) || 1;
    const filters = (st) => ({ milestone: m.name, status: st });
    return [m.name, m.stage, m.level,
      bar(statuses.map((st) => [m.counts[st] || 0, st, st, listHref(m.level, filters(st))]), total),
      h("span", {}, ...statuses.flatMap((st, i) => [i ? " · " : "", listLink(m.level, filters(st), `${label(st)} ${m.counts[st] || 0}`)])),
      pct(m.achieved_share), duration(m.median_time_to_achieve_s), duration(m.p90_time_to_achieve_s)];
  });
  $("funnel").replaceChildren(...(rows.length ? [legend(statuses.map((st) => [label(st), st])), table(
    [["milestone"], ["stage"], ["level"], ["subjects by status"], [""], ["achieved", "num"], ["median time", "num"], ["p90 time", "num"]],
    rows)] : [h("p", {}, "This model has no milestones.")]));
}

// The quadrant map says one thing: its regions are the quadrants. Right of the dashed line:
// engaged. Upper band: succeeding (the quadrant's rule, not a progress cut), lower band: not; within
// a band a dot sits by its milestone progress. A dot's colour is the region it is in; a subject
// too young to judge (quadrant "new", or one this page does not know) is a hollow dot, in the
// upper band. Every dot is inside the plot, keeps its name in a hover title, and the names that
// fit are written beside the dots, the busiest account's first.
const UPPER = ["thriving", "quiet"];
function quadrantMap(items, threshold) {
  const W = 740, H = 440, L = 88, B = 50, T = 10, R = 10, P = 10; // P: the dots' margin inside the plot
  const x = (score) => Math.log10(1 + Math.max(0, score));
  const maxX = Math.max(x(threshold) * 2, ...items.map((a) => x(a.engagement.score)), 1);
  const px = (v) => L + P + ((W - L - R - 2 * P) * v) / maxX;
  const band = (H - B - T) / 2, gap = 8, top = 24; // top: a strip at each band's top for the region's name
  const mid = T + band;
  const judged = (q) => CLASSIC_QUADRANTS.includes(q);
  // progress 0..1 within its band, below the strip of the region's name and clear of the split line
  const py = (a) => (UPPER.includes(a.quadrant) || !judged(a.quadrant) ? mid - gap - (band - gap - top) * a.success.progress
    : H - B - P - (band - P - top) * a.success.progress);
  const g = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "accounts by engagement and success" });
  const xT = px(x(threshold));
  const placed = []; // boxes taken by the regions' names and the dots' names, which avoid them
  for (const [q, x0, y0, x1, y1] of [["quiet", L, T, xT, mid], ["thriving", xT, T, W - R, mid], ["at_risk", L, mid, xT, H - B], ["stuck", xT, mid, W - R, H - B]]) {
    g.append(s("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: colour(q), "fill-opacity": 0.07 }));
    const left = q === "quiet" || q === "at_risk", width = 8 + 7 * label(q).length;
    g.append(s("text", { class: "region", x: left ? x0 + 6 : x1 - 6, y: y0 + 16, style: `fill:${colour(q)}`, "text-anchor": left ? "start" : "end" }, label(q)));
    placed.push({ x0: left ? x0 + 4 : x1 - 4 - width, x1: left ? x0 + 4 + width : x1 - 4, y0: y0 + 4, y1: y0 + 18 });
  }
  g.append(s("line", { x1: xT, x2: xT, y1: T, y2: H - B, stroke: "#999", "stroke-dasharray": "4 3" }));
  g.append(s("line", { x1: L, x2: W - R, y1: mid, y2: mid, stroke: "#999" }));
  g.append(s("text", { x: xT + 4, y: H - B - 4 }, `engaged ≥ ${threshold}`));
  g.append(s("text", { x: 24, y: T + band / 2 }, "succeeding"));
  g.append(s("text", { x: 24, y: mid + band / 2 }, "not"));
  g.append(s("text", { x: 24, y: mid + band / 2 + 13 }, "succeeding"));
  for (const v of [0, 1, 10, 100, 1000, 10000, 100000]) {
    if (x(v) <= maxX) g.append(s("text", { class: "tick", x: px(x(v)), y: H - B + 13, "text-anchor": "middle" }, String(v)));
  }
  g.append(s("text", { class: "axis", x: L + (W - L - R) / 2, y: H - 8, "text-anchor": "middle" }, "engagement score (decayed, log scale) →"));
  g.append(s("text", { class: "axis", x: 0, y: 0, "text-anchor": "middle", transform: `translate(12,${T + (H - B - T) / 2}) rotate(-90)` },
    "milestone progress within its band ↑"));
  // Names: the busiest account first, then stuck and at-risk accounts, then by score.
  const rank = { stuck: 0, at_risk: 1, thriving: 2, quiet: 3 };
  const busiest = items.reduce((top, a) => (top === null || a.engagement.score > top.engagement.score ? a : top), null);
  const labels = s("g", { class: "names" });
  const order = items.slice().sort((a, b) => (b === busiest) - (a === busiest) || (rank[a.quadrant] ?? 4) - (rank[b.quadrant] ?? 4) || b.engagement.score - a.engagement.score);
  for (const a of order) {
    const cx = px(x(a.engagement.score)), cy = py(a);
    const fill = judged(a.quadrant) ? { fill: colour(a.quadrant), "fill-opacity": 0.8 } : { fill: "#fff", stroke: colour(a.quadrant), "stroke-width": 2 };
    const dot = s("circle", { cx, cy, r: 4, ...fill, style: "cursor:pointer" },
      s("title", {}, `${a.account_id}: score ${num(a.engagement.score)}, ${label(a.quadrant)}, progress ${pct(a.success.progress)}`));
    dot.addEventListener("click", () => { location.hash = `#subject/account/${encodeURIComponent(a.account_id)}`; });
    g.append(dot);
    const text = a.account_id.length > 18 ? `${a.account_id.slice(0, 17)}…` : a.account_id;
    const width = 8 + 6.2 * text.length;
    // beside the dot on the right, else on its left, else the same a line below or above
    const spots = [0, 14, -14].flatMap((dy) => [[cx + 6, "start", dy], [cx - 6 - width, "end", dy]]);
    for (const [x0, anchor, dy] of spots) {
      const box = { x0, x1: x0 + width, y0: cy + dy - 6, y1: cy + dy + 6 };
      if (placed.length >= 64 || box.x0 < L || box.x1 > W - R || box.y0 < T || box.y1 > H - B ||
        placed.some((p) => p.x0 < box.x1 && box.x0 < p.x1 && p.y0 < box.y1 && box.y0 < p.y1)) continue;
      placed.push(box);
      labels.append(s("text", { x: anchor === "start" ? box.x0 : cx - 6, y: cy + dy + 4, "text-anchor": anchor }, text));
      break;
    }
  }
  g.append(labels);
  return g;
}

// MRR is shown when the model names a revenue event: without one every account's `revenue` reads
// 0, which would say "pays nothing" where the truth is "not measured".
const measuresRevenue = () => Boolean(model && model.revenue);

function subjectTable(level, items) {
  const mrr = measuresRevenue() && items.some((a) => a.revenue);
  return table([[level], ["quadrant"], ["score", "num"], ["trend"], ["success", "num"], ["stage"], ...(mrr ? [["MRR", "num"]] : []), ["last seen", "date"]],
    items.map((a) => [subjectLink(level, a[`${level}_id`]), chip(a.quadrant, a.quadrant), num(a.engagement.score), a.engagement.trend,
      `${a.success.achieved}/${a.success.total} · ${pct(a.success.progress)}`, a.stage || "–", ...(mrr ? [money(a.revenue && a.revenue.mrr)] : []), day(a.last_seen)]));
}

async function showAccounts() {
  const [page, stuck, atRisk] = await Promise.all([api("v1/accounts", { limit: 1000 }),
    api("v1/accounts", { quadrant: "stuck", limit: 20 }), api("v1/accounts", { quadrant: "at_risk", limit: 20 })]);
  const threshold = engagedThreshold();
  const quadrants = shown(QUADRANTS, CLASSIC_QUADRANTS, [...new Set(page.items.map((a) => a.quadrant))]);
  const counts = Object.fromEntries(quadrants.map((q) => [q, page.items.filter((a) => a.quadrant === q).length]));
  $("quadrant-counts").replaceChildren(h("p", { class: "legend" },
    ...quadrants.map((q) => h("a", { class: "count", href: listHref("account", { quadrant: q }) },
      h("i", { style: CLASSIC_QUADRANTS.includes(q) ? `background:${colour(q)}` : `border:2px solid ${colour(q)}` }), `${label(q)} ${counts[q]}`)),
    page.next_cursor ? "(the top 1,000 accounts by score)" : ""));
  $("quadrant-map").replaceChildren(page.items.length ? quadrantMap(page.items, threshold) : h("p", {}, "No accounts yet."));
  $("stuck").replaceChildren(stuck.items.length ? subjectTable("account", stuck.items) : h("p", {}, "No stuck accounts."),
    stuck.next_cursor ? listLink("account", { quadrant: "stuck" }, "all stuck accounts →") : "");
  $("at-risk").replaceChildren(atRisk.items.length ? subjectTable("account", atRisk.items) : h("p", {}, "No accounts at risk."),
    atRisk.next_cursor ? listLink("account", { quadrant: "at_risk" }, "all accounts at risk →") : "");
}

async function showList(level, query) {
  const filters = Object.fromEntries(new URLSearchParams(query));
  const page = await api(`v1/${level}s`, { ...filters, limit: 200 });
  const what = Object.entries(filters).map(([k, v]) => `${k} ${v.replace("_", " ")}`).join(", ");
  $("list-title").textContent = `${level === "user" ? "Users" : "Accounts"}${what ? ": " + what : ""}`;
  $("list").replaceChildren(page.items.length ? subjectTable(level, page.items) : h("p", {}, "Nobody, at this instant."),
    page.next_cursor ? h("p", { class: "help" }, "The first 200 by score.") : "");
}

// Round steps for an axis: 1, 2 or 5 times a power of ten, about `count` of them up to `max`.
function step(max, count = 4) {
  const raw = Math.max(max, 1) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw);
}

// Movements per period as stacked bars: the `up` series above the zero line, the `down` series
// below it (each [field, colour, label]); y ticks and gridlines in round steps, `what` on the
// y axis. The period not over yet is drawn faded and outlined: its counts are so far, not final.
function movementChart(periods, up, down, what, fmt) {
  const W = 720, H = 280, L = 64, R = 10, T = 10, B = 34;
  const total = (p, series) => series.reduce((n, [f]) => n + Math.max(0, p[f] || 0), 0);
  const unit = step(Math.max(1, ...periods.map((p) => total(p, up))) + Math.max(0, ...periods.map((p) => total(p, down))));
  const top = unit * Math.ceil(Math.max(1, ...periods.map((p) => total(p, up))) / unit);
  const bottom = unit * Math.ceil(Math.max(0, ...periods.map((p) => total(p, down))) / unit);
  const scale = (H - T - B) / (top + bottom);
  const zero = T + top * scale;
  const w = (W - L - R) / Math.max(1, periods.length);
  const g = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": what });
  for (let v = -bottom; v <= top; v += unit) {
    const y = zero - v * scale;
    g.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: v === 0 ? "#999" : "#eef1f4" }));
    g.append(s("text", { class: "tick", x: L - 4, y: y + 4, "text-anchor": "end" }, v < 0 ? `−${fmt(-v)}` : fmt(v)));
  }
  g.append(s("text", { class: "axis", x: 0, y: 0, "text-anchor": "middle", transform: `translate(12,${T + (H - T - B) / 2}) rotate(-90)` }, what));
  periods.forEach((p, i) => {
    const x = L + i * w + 1, width = Math.max(1, w - 2);
    const unfinished = p.partial ? { "fill-opacity": 0.35, stroke: "var(--ink)", "stroke-dasharray": "2 2" } : {};
    const so = p.partial ? " (so far: the period is not over)" : "";
    let y = zero;
    for (const [field, color, name] of up) {
      const n = Math.max(0, p[field] || 0);
      y -= n * scale;
      g.append(s("rect", { x, y, width, height: n * scale, fill: colour(color), ...unfinished }, s("title", {}, `${day(p.start)} ${name}: ${fmt(n)}${so}`)));
    }
    if (p.partial) g.append(s("text", { x, y: y - 3 }, "so far"));
    let below = zero;
    for (const [field, color, name] of down) {
      const n = Math.max(0, p[field] || 0);
      g.append(s("rect", { x, y: below, width, height: n * scale, fill: colour(color), ...unfinished }, s("title", {}, `${day(p.start)} ${name}: ${fmt(n)}${so}`)));
      below += n * scale;
    }
  });
  g.append(s("text", { class: "tick", x: L, y: H - 14 }, day(periods[0].start)));
  g.append(s("text", { class: "tick", x: W - R, y: H - 14, "text-anchor": "end" }, day(periods[periods.length - 1].start)));
  g.append(s("text", { class: "axis", x: L + (W - L - R) / 2, y: H - 2, "text-anchor": "middle" }, "period start →"));
  return h("div", {}, legend([...up.map(([, c, name]) => [name, c]), ...down.map(([, c, name]) => [`${name} (below the line)`, c]),
    ["faded, outlined: the period is not over", "pending", "dashed"]]), g);
}

const GROWTH_UP = [["retained", "pending", "retained"], ["resurrected", "quiet", "resurrected"], ["new", "thriving", "new"]];
const GROWTH_DOWN = [["churned", "at_risk", "churned"]];

async function showGrowth() {
  const level = $("growth-level").value;
  const growth = await api("v1/growth", { period: $("growth-period").value, level });
  const periods = growth.periods;
  $("growth-chart").replaceChildren(periods.length ? movementChart(periods, GROWTH_UP, GROWTH_DOWN, `${level}s`, (n) => num(n, 0)) : h("p", {}, "No activity yet."));
  $("growth-table").replaceChildren(periods.length ? table(
    [["period"], ["new", "num"], ["retained", "num"], ["resurrected", "num"], ["churned", "num"], ["active", "num"], ["quick ratio", "num"], ["NPS", "num"]],
    periods.slice().reverse().map((p) => [p.partial ? h("span", { class: "partial" }, day(p.start), " so far") : day(p.start), p.new, p.retained, p.resurrected, p.churned, p.active,
      p.quick_ratio === null ? "–" : num(p.quick_ratio, 2), p.nps ? `${num(p.nps.score, 0)} (${p.nps.responses})` : "–"])) : "");
}

function scoreChart(history, threshold) {
  const W = 720, H = 210, L = 56, R = 10, T = 10, B = 34;
  const pts = history.points;
  const unit = step(Math.max(threshold * 1.2, ...pts.map((p) => p.score), 1));
  const top = unit * Math.ceil(Math.max(threshold * 1.2, ...pts.map((p) => p.score), 1) / unit);
  const px = (i) => L + ((W - L - R) * i) / Math.max(1, pts.length - 1);
  const py = (v) => H - B - ((H - B - T) * Math.max(0, v)) / top;
  const g = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "score over time" });
  for (let v = 0; v <= top; v += unit) {
    g.append(s("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), stroke: v === 0 ? "#999" : "#eef1f4" }));
    g.append(s("text", { class: "tick", x: L - 4, y: py(v) + 4, "text-anchor": "end" }, num(v, 0)));
  }
  g.append(s("text", { class: "axis", x: 0, y: 0, "text-anchor": "middle", transform: `translate(12,${T + (H - T - B) / 2}) rotate(-90)` }, "score"));
  g.append(s("line", { x1: L, x2: W - R, y1: py(threshold), y2: py(threshold), stroke: "#999", "stroke-dasharray": "4 3" }));
  g.append(s("polyline", { points: pts.map((p, i) => `${px(i)},${py(p.score)}`).join(" "), fill: "none", stroke: "var(--ink)", "stroke-width": 1.5 }));
  g.append(s("text", { class: "tick", x: L, y: H - 14 }, day(pts[0].at)));
  g.append(s("text", { class: "tick", x: W - R, y: H - 14, "text-anchor": "end" }, day(pts[pts.length - 1].at)));
  g.append(s("text", { class: "axis", x: L + (W - L - R) / 2, y: H - 2, "text-anchor": "middle" }, "day (one point a day) →"));
  return h("div", {}, legend([["score (decayed engagement)", "ink", "line"], [`engaged ≥ ${threshold}`, "muted", "dashed"]]), g);
}

// "2 of 3 prompt_completed, 20 h left": per criterion what is done of its target, and the time
// the window has left; for an achieved or missed milestone, what its criteria reached.
function whyNotYet(m) {
  const open = m.status === "pending" || m.status === "in_progress";
  const what = (c) => (c.kind === "tagged" ? "tagged events" : c.kind === "distinct" ? `distinct ${c.event}` :
    c.kind === "sum" ? `${c.event} value` : c.kind === "rate" ? `${c.event} a day` : c.event);
  const parts = m.criteria.map((c, i) => (open && m.missing[i] === 0 ? `${what(c)} met` : `${num(c.done)} of ${num(c.target)} ${what(c)}`));
  if (open && m.missing.length && m.missing.every((x) => x === 0)) parts.push("judged once its day is over");
  if (open && m.time_left_s !== null && m.time_left_s !== undefined) parts.push(`${duration(m.time_left_s)} left`);
  return h("span", { class: open ? "why" : "why done" }, parts.join(", "));
}

// Why the quadrant is what it is, in the words of the rule (docs/collector.md,
// "What the labels mean"): success is judged in the judging stage, the current one or, when it has no
// milestone of this level, the latest earlier one that has. The verdict is the API's quadrant; this
// names the milestones behind it.
function whyQuadrant(v, threshold) {
  const stages = (model.stages || []).map((st) => st.name);
  const here = stages.indexOf(v.stage);
  const names = (ms) => ms.map((m) => m.name).join(", ");
  const engaged = v.engagement.score >= threshold ? `engaged (score ${num(v.engagement.score)} ≥ ${threshold})`
    : `not engaged (score ${num(v.engagement.score)} < ${threshold})`;
  if (v.quadrant === "new") {
    const young = (model.engagement && model.engagement.new_for) || "1d";
    return h("p", { class: "help why-quadrant" }, `new: first seen ${day(v.first_seen)}, younger than ${young}: too early to judge; ${engaged}.`);
  }
  const judging = Math.max(-1, ...v.milestones.map((m) => stages.indexOf(m.stage)).filter((i) => i <= here));
  const ms = v.milestones.filter((m) => judging >= 0 && stages.indexOf(m.stage) === judging);
  const where = judging === here ? `in ${v.stage}` : `in ${stages[judging]} (the latest stage with milestones of this level)`;
  const failed = ms.filter((m) => m.status === "missed" || m.status === "lapsed");
  const achieved = ms.filter((m) => m.status === "achieved");
  let success;
  if (!ms.length) success = "no milestone of this level up to its stage";
  else if (failed.length) success = `not succeeding ${where}: ${failed.map((m) => `${m.name} ${m.status}`).join(", ")}`;
  else if (v.quadrant === "thriving" || v.quadrant === "quiet") {
    const going = ms.filter((m) => m.progress > 0);
    success = `succeeding ${where}: ${achieved.length ? `${names(achieved)} achieved` : `${names(going.length ? going : ms)} on pace`}`;
  } else success = `not succeeding ${where}: ${names(ms.filter((m) => m.status !== "achieved"))} not achieved, nothing on pace`;
  return h("p", { class: "help why-quadrant" }, `${label(v.quadrant)}: ${engaged}; ${success}.`);
}

// Why the score is what it is: each event name's exact share of it now (`GET /v1/scores`, top ten),
// to 0.1%. A negative weight makes a negative share: its bar is drawn in the at-risk colour.
function scoreShares(history) {
  if (!history.shares.length) return h("p", { class: "help" }, "No events count toward the score yet.");
  const widest = Math.max(...history.shares.map((x) => Math.abs(x.share)));
  return table([["event"], ["share of the score", "num"]], history.shares.map((x) => [x.event,
    h("span", { class: "share" }, bar([[Math.abs(x.share), x.share < 0 ? "at_risk" : "in_progress", x.event]], widest),
      `${(100 * x.share).toFixed(1)}%`)]));
}

// An account's people (`GET /v1/users?account_id=`, the account's `members`):
// counts by quadrant, then each user with quadrant, score and a link. A collector whose account
// view has no `members` does not know membership yet: said so, never a list of other people.
async function accountPeople(v, id) {
  if (!v.members) return h("p", { class: "help" }, "This collector does not list an account's people (its account view has no members).");
  const page = await api("v1/users", { account_id: id, limit: 200 });
  const people = page.items.filter((u) => !u.accounts || u.accounts.some((a) => a.id === id));
  const byQuadrant = v.members.by_quadrant || {};
  const quadrants = shown(QUADRANTS, [], Object.keys(byQuadrant).filter((q) => byQuadrant[q] > 0));
  return h("div", { id: "people" },
    h("p", { class: "legend" }, `${v.members.total} ${v.members.total === 1 ? "person" : "people"}: `,
      ...quadrants.map((q) => h("span", {}, h("i", { style: `background:${colour(q)}` }), `${label(q)} ${byQuadrant[q]}`))),
    people.length ? subjectTable("user", people) : h("p", {}, "Nobody, at this instant."),
    page.next_cursor ? listLink("user", { account_id: id }, "all its people →") : "");
}

async function showSubject(level, id) {
  $("subject-level").value = level;
  $("subject-id").value = id;
  const [v, history] = await Promise.all([
    api(`v1/${level}s/${encodeURIComponent(id)}`), api("v1/scores", { [`${level}_id`]: id, days: 90 })]);
  const threshold = engagedThreshold();
  const people = level === "account" ? await accountPeople(v, id) : null;
  const card = (name, value) => h("div", { class: "card" }, name, h("b", {}, value));
  const cards = h("div", { class: "cards" },
    card("score", num(v.engagement.score)), card("trend", v.engagement.trend), card("events", num(v.engagement.events, 0)),
    card("active days (30)", v.engagement.active_days_30d), card("stage", v.stage || "–"),
    card("quadrant", chip(v.quadrant, v.quadrant)), card("success", `${v.success.achieved}/${v.success.total} · ${pct(v.success.progress)}`));
  if (v.nps) cards.append(card("NPS", `${num(v.nps.score, 0)} (${v.nps.responses})`));
  if (v.revenue && measuresRevenue()) cards.append(card(v.revenue.since ? `MRR since ${day(v.revenue.since)}` : "MRR", money(v.revenue.mrr)));
  const accounts = v.accounts && v.accounts.length
    ? h("p", { class: "help" }, "accounts: ", ...v.accounts.flatMap((a, i) => [i ? ", " : "", subjectLink("account", a.id)])) : "";
  const milestones = v.milestones.length ? table(
    [["milestone"], ["stage"], ["status"], ["progress", "date"], ["criteria: done of target, time left"], ["achieved", "date"], ["deadline", "date"]],
    v.milestones.map((m) => [m.name, m.stage, chip(m.status, m.status), h("span", {}, bar([[m.progress, m.status, "progress"], [1 - m.progress, "pending", "left"]], 1), pct(m.progress)),
      whyNotYet(m), day(m.achieved_at), day(m.deadline)])) : h("p", {}, "No milestones at this level.");
  $("subject").replaceChildren(
    h("h3", {}, `${level} ${id}`), h("p", { class: "help" }, `first seen ${day(v.first_seen)}, last seen ${day(v.last_seen)}`), accounts,
    cards, whyQuadrant(v, threshold), ...(people ? [h("h3", {}, "People"), people] : []),
    h("h3", {}, "Score, last 90 days"), scoreChart(history, threshold),
    h("div", { class: "side-by-side" }, h("div", {}, h("h3", {}, "Milestones"), milestones),
      h("div", { id: "score-shares" }, h("h3", {}, "What the score is made of"), scoreShares(history))));
}

// ---- revenue: MRR movements per period, MRR at stake by quadrant ---------------------------------

const MRR_UP = [["new", "mrr_new", "new"], ["reactivated", "mrr_reactivated", "reactivated"], ["expansion", "mrr_expansion", "expansion"]];
const MRR_DOWN = [["contraction", "mrr_contraction", "contraction"], ["churned", "mrr_churned", "churned"]];

// The MRR of the accounts in each quadrant at this instant: a bar per quadrant and its share of
// the whole, led by the sum of the stuck and at-risk ones (the money at stake).
const AT_STAKE = ["stuck", "at_risk"];
function mrrByQuadrant(byQuadrant) {
  const quadrants = shown(QUADRANTS, CLASSIC_QUADRANTS, Object.keys(byQuadrant));
  const whole = quadrants.reduce((n, q) => n + (byQuadrant[q] || 0), 0);
  if (!whole) return h("p", {}, "No MRR at this instant.");
  const widest = Math.max(...quadrants.map((q) => byQuadrant[q] || 0));
  const stake = AT_STAKE.reduce((n, q) => n + (byQuadrant[q] || 0), 0);
  return h("div", {}, h("p", { class: "at-stake" }, `At stake (stuck and at risk): ${money(stake)} of ${money(whole)} MRR (${pct(stake / whole)}).`),
    legend(quadrants.map((q) => [label(q), q])),
    table([["quadrant"], ["MRR", "num"], ["share", "num"]], quadrants.map((q) => [chip(q, q),
      h("span", { class: "share" }, bar([[byQuadrant[q] || 0, q, label(q), listHref("account", { quadrant: q })]], widest), money(byQuadrant[q] || 0)),
      pct((byQuadrant[q] || 0) / whole)])));
}

async function showRevenue() {
  let report;
  try {
    report = await api("v1/revenue", { period: $("revenue-period").value, periods: 12 });
  } catch (err) {
    // 404: a collector without the revenue report; 400: a model without a revenue event
    if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 400)) throw err;
    const none = h("p", { class: "empty" }, "No revenue event configured: add [projects.<name>.revenue] event = \"...\" to the model " +
      "(its events' value is an account's MRR from then on) to see MRR movements here.");
    $("revenue-chart").replaceChildren(none, h("p", { class: "help" }, `The collector answered ${err.status}: ${err.message}`));
    $("revenue-table").replaceChildren();
    $("revenue-quadrants").replaceChildren();
    return;
  }
  const periods = Array.isArray(report.periods) ? report.periods : [];
  $("revenue-chart").replaceChildren(periods.length ? movementChart(periods, MRR_UP, MRR_DOWN, "MRR", money) : h("p", { class: "empty" }, "No revenue events yet."));
  const ratio = (x) => (x === null || x === undefined ? "–" : num(x, 2));
  $("revenue-table").replaceChildren(periods.length ? table(
    [["period"], ["MRR at start", "num"], ["new", "num"], ["reactivated", "num"], ["expansion", "num"], ["contraction", "num"], ["churned", "num"],
      ["MRR at end", "num"], ["net retention", "num"], ["gross retention", "num"], ["logo churn", "num"], ["quick ratio", "num"]],
    periods.slice().reverse().map((p) => [p.partial ? h("span", { class: "partial" }, day(p.start), " so far") : day(p.start),
      money(p.mrr_start), money(p.new), money(p.reactivated), money(p.expansion), money(p.contraction), money(p.churned), money(p.mrr_end),
      pct(p.net_retention), pct(p.gross_retention), pct(p.logo_churn_rate), ratio(p.quick_ratio)])) : "");
  $("revenue-quadrants").replaceChildren(mrrByQuadrant(report.by_quadrant || {}));
}

// ---- insights: predictors, fitted weights, retention, stickiness ----------------------------------

const EXTRA_VIEWS = { insights: showInsights, revenue: showRevenue };

function outcomeOptions() {
  const select = $("insights-outcome");
  const names = ((model && model.milestones) || []).map((m) => `${m.name}`);
  if (select.options.length !== names.length) {
    select.replaceChildren(...names.map((n) => h("option", {}, n)));
  }
  return select.value;
}

const interval = (i) => `${pct(i.low)}–${pct(i.high)}`;

function predictorsTable(p) {
  const rows = p.predictors.filter((r) => r.best).slice(0, 30);
  const star = (r) => (p.proposal && r.event === p.proposal.event && r.threshold === p.proposal.threshold ? "★ " : "");
  const lead = p.proposal
    ? h("p", {}, "Proposal: ", h("b", {}, `${p.proposal.event} at least ${p.proposal.threshold}× in ${duration(p.window_s)}`),
      ` — ${pct(p.proposal.precision)} reach ${p.outcome} (${interval(p.proposal.interval)}) against ${pct(p.proposal.rate_without)} of the others.`)
    : h("p", { class: "help" }, "No confident proposal: too few subjects, or no early behaviour separates the outcome.");
  return h("div", {},
    h("p", { class: "help" }, `${p.subjects} ${p.level}s first seen at least ${duration(p.window_s)} ago; ${p.achieved} reached ${p.outcome} (${pct(p.base_rate)}). Best threshold per event:`),
    lead,
    rows.length ? table(
      [["event"], ["at least", "num"], ["lift", "num"], ["coverage", "num"], ["precision", "num"], ["95%", "num"], ["recall", "num"], ["J", "num"], ["subjects", "num"], [""]],
      rows.map((r) => [star(r) + r.event, r.threshold, r.lift === null ? "–" : num(r.lift, 2), pct(r.coverage), pct(r.precision), interval(r.interval),
        pct(r.recall), num(r.youden, 2), `${r.subjects_with} / ${r.subjects_without}`,
        r.frequent_not_predictive ? "frequent, predicts nothing" : r.confident ? "" : "not conclusive"])) : "");
}

function weightsTable(w) {
  const auc = (x) => (x === null ? "–" : num(x, 3));
  return h("div", {},
    h("p", { class: "help" }, `Held-out AUC (${w.test} of ${w.subjects} subjects): ${auc(w.fitted_auc)} with these weights, ${auc(w.current_auc)} with the current ones. headway-collector suggest-weights prints them as TOML.`),
    w.weights.length ? table([["event"], ["current", "num"], ["suggested", "num"], ["subjects", "num"]],
      w.weights.map((x) => [x.event, num(x.current, 3), num(x.suggested, 3), x.subjects])) : h("p", {}, "Nothing to fit yet."));
}

function retentionTriangle(r) {
  const width = Math.max(0, ...r.cohorts.map((c) => c.retained.length));
  const head = [["cohort"], ["size", "num"], ...Array.from({ length: width }, (_, k) => [`+${k}`, "num"])];
  const rows = r.cohorts.map((c) => [day(c.start), c.size, ...Array.from({ length: width }, (_, k) => {
    if (k >= c.retained.length) return "";
    const share = c.size ? c.retained[k] / c.size : 0;
    return h("span", { class: "heat", style: `background:rgba(47,143,78,${share.toFixed(2)})`, title: `${c.retained[k]} of ${c.size}` }, c.size ? pct(share) : "–");
  })]);
  return table(head, rows);
}

async function showInsights() {
  const outcome = outcomeOptions();
  const level = $("retention-level").value;
  const [retention, sticky, predictors, weights] = await Promise.all([
    api("v1/retention", { period: $("retention-period").value, cohorts: 8, level }),
    api("v1/stickiness", { days: 30, level }),
    outcome ? api("v1/insights/predictors", { outcome, window: $("insights-window").value }) : null,
    outcome ? api("v1/insights/weights", { outcome, window: $("insights-window").value }) : null]);
  $("insights-predictors").replaceChildren(predictors ? predictorsTable(predictors) : h("p", {}, "This model has no milestones."));
  $("insights-weights").replaceChildren(weights ? weightsTable(weights) : "");
  $("insights-stickiness").replaceChildren(h("div", { class: "cards" },
    h("div", { class: "card" }, "DAU/MAU (30 days)", h("b", {}, pct(sticky.dau_mau))),
    h("div", { class: "card" }, "DAU", h("b", {}, num(sticky.dau))), h("div", { class: "card" }, "MAU", h("b", {}, sticky.mau))));
  $("insights-retention").replaceChildren(retention.cohorts.length ? retentionTriangle(retention) : "");
}

function initInsights() {
  $("insights-form").addEventListener("submit", (e) => { e.preventDefault(); route(); });
  for (const id of ["insights-outcome", "retention-period", "retention-level"]) $(id).addEventListener("change", route);
}

document.addEventListener("DOMContentLoaded", initInsights);

// ---- navigation -----------------------------------------------------------------------------

async function route() {
  const [view, ...rest] = (location.hash.slice(1) || "funnel").split("/");
  const name = ["funnel", "accounts", "growth", "subject", "list", "live", ...Object.keys(EXTRA_VIEWS)].includes(view) ? view : "funnel";
  for (const section of document.querySelectorAll("main section")) section.hidden = section.id !== `view-${name}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${name === "list" ? (rest[0] === "user" ? "funnel" : "accounts") : name}`);
  if (!key) { status("Enter a read key of your project (make run prints the demo one)."); return; }
  status("Loading…");
  try {
    if (model === null) {
      const info = await api("v1/model");
      model = info.model;
      $("project").textContent = `· ${info.project}`;
    }
    if (name === "funnel") await showFunnel();
    else if (name === "accounts") await showAccounts();
    else if (name === "growth") await showGrowth();
    else if (name === "list") await showList(rest[0] === "user" ? "user" : "account", rest.slice(1).join("/"));
    else if (EXTRA_VIEWS[name]) await EXTRA_VIEWS[name]();
    else if (rest.length >= 2) await showSubject(rest[0] === "user" ? "user" : "account", decodeURIComponent(rest.slice(1).join("/")));
    else $("subject").replaceChildren();
    status("");
  } catch (err) {
    status(err.message, true);
    if (/key/i.test(err.message)) model = null;
  }
}

function init() {
  const fromLink = location.hash.match(/^#key=(.+)$/);
  if (fromLink) {
    key = decodeURIComponent(fromLink[1]);
    localStorage.setItem("headway-read-key", key);
    history.replaceState(null, "", location.pathname + "#funnel");
  }
  $("key").value = key;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    key = $("key").value.trim();
    localStorage.setItem("headway-read-key", key);
    model = null;
    route();
  });
  $("subject-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#subject/${$("subject-level").value}/${encodeURIComponent($("subject-id").value.trim())}`;
  });
  for (const id of ["funnel-level", "growth-period", "growth-level", "revenue-period"]) $(id).addEventListener("change", route);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", init);

// ---- live feed of transitions ------------------------------------------------------------------
// EventSource cannot send an Authorization header, so the read key goes in the query (`?key=`),
// which /v1/stream alone accepts; the browser reconnects by itself, sending Last-Event-ID.

const LIVE_TYPES = ["milestone.achieved", "milestone.lapsed", "milestone.missed", "stage.entered", "quadrant.changed", "trend.changed"];
const LIVE_KEEP = 50;
let live = null;

function liveItem(t) {
  const what = t.data.milestone !== undefined ? t.data.milestone : `${t.data.from} → ${t.data.to}`;
  return h("li", { class: `live-${t.type.replace(".", "-")}` },
    h("time", { datetime: t.at }, t.at.replace("T", " ").slice(0, 19)), " ",
    h("b", {}, t.type), " ", subjectLink(t.level, t.subject), " ", what);
}

// The stream is open only while the Live view is shown.
function startLive() {
  if (live !== null) live.close();
  live = null;
  $("live-feed").replaceChildren();
  if (!key || !location.hash.startsWith("#live")) return;
  const url = new URL("v1/stream", document.baseURI);
  url.searchParams.set("key", key);
  live = new EventSource(url);
  live.onopen = () => { $("live-state").textContent = "· connected"; };
  live.onerror = () => { $("live-state").textContent = "· reconnecting…"; };
  for (const type of LIVE_TYPES) {
    live.addEventListener(type, (e) => {
      const feed = $("live-feed");
      feed.prepend(liveItem(JSON.parse(e.data)));
      while (feed.children.length > LIVE_KEEP) feed.lastChild.remove();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startLive();
  $("key-form").addEventListener("submit", () => setTimeout(startLive));
  window.addEventListener("hashchange", () => { if (location.hash.startsWith("#live") !== (live !== null)) startLive(); });
});
