// Minimal chart drawer for the dashboard: bar charts (plain or stacked) and a donut, on
// <canvas>. Written here instead of pulling in a charting library: four charts do not need
// one, and the console must work with no network access and no build step.

const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const TEXT = '#1d2330';
const MUTED = '#5d6675';
const GRID = '#e6e9ef';

// Last spec per canvas, so a resize can redraw at the new size.
const drawn = new Map();

export function cssColor(name, fallback = '#7a8699') {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

// Size the backing store to the displayed size times the pixel ratio (crisp on HiDPI).
function setup(canvas) {
  const rect = canvas.getBoundingClientRect();
  const width = Math.max(Math.round(rect.width) || canvas.clientWidth || 600, 120);
  const height = Math.max(Math.round(rect.height) || canvas.clientHeight || 260, 120);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = FONT;
  ctx.textBaseline = 'middle';
  return { ctx, width, height };
}

// A round axis maximum and step (1, 2 or 5 times a power of ten); whole steps for counts.
function niceScale(max, integer, ticks = 4) {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  return { max: Math.ceil(max / step) * step, step };
}

function finish(canvas, spec, summary, marks) {
  drawn.set(canvas, spec);
  canvas.dataset.drawn = 'true';
  canvas.dataset.marks = String(marks);
  canvas.setAttribute('aria-label', summary);
  canvas.textContent = summary; // fallback content for assistive technology
}

function emptyMessage(ctx, width, height, text) {
  ctx.fillStyle = MUTED;
  ctx.textAlign = 'center';
  ctx.fillText(text, width / 2, height / 2);
  ctx.strokeStyle = GRID;
  ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
}

function legend(ctx, items, x, y, maxWidth) {
  let cx = x;
  let cy = y;
  ctx.textAlign = 'left';
  for (const { name, color } of items) {
    const w = ctx.measureText(name).width + 26;
    if (cx + w > x + maxWidth && cx > x) {
      cx = x;
      cy += 16;
    }
    ctx.fillStyle = color;
    ctx.fillRect(cx, cy - 5, 10, 10);
    ctx.fillStyle = TEXT;
    ctx.fillText(name, cx + 14, cy);
    cx += w;
  }
  return cy - y + 16;
}

/**
 * Bar chart. spec: {labels, series: [{name, color, values}], stacked, format(v),
 * integer (whole-number axis), minMax (smallest axis maximum), notes (text under each
 * label), legend (false hides it), title (accessible summary prefix), empty}.
 */
export function barChart(canvas, spec) {
  const { ctx, width, height } = setup(canvas);
  const { labels, series } = spec;
  const format = spec.format || ((v) => String(v));
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const peak = spec.stacked
    ? Math.max(0, ...totals)
    : Math.max(0, ...series.flatMap((s) => s.values.map((v) => v || 0)));
  const summary = `${spec.title || 'Chart'}: ${labels
    .map((l, i) => `${l} ${format(totals[i])}`)
    .join(', ')}`;
  // With a floor for the axis (spec.minMax) all-zero data is still a meaningful chart.
  if (!labels.length || !(peak > 0 || spec.minMax > 0)) {
    emptyMessage(ctx, width, height, spec.empty || 'No data yet');
    finish(canvas, spec, `${spec.title || 'Chart'}: no data yet`, 0);
    return;
  }
  const legendHeight = series.length > 1 && spec.legend !== false ? legend(ctx, series, 48, 8, width - 56) + 4 : 4;
  const notesHeight = spec.notes ? 14 : 0;
  const plot = { left: 48, right: width - 8, top: legendHeight + 14, bottom: height - 24 - notesHeight };
  const scale = niceScale(Math.max(peak, spec.minMax || 0), spec.integer);
  const y = (v) => plot.bottom - (v / scale.max) * (plot.bottom - plot.top);

  // Grid lines and y labels.
  ctx.textAlign = 'right';
  for (let v = 0; v <= scale.max + scale.step / 2; v += scale.step) {
    const py = Math.round(y(v)) + 0.5;
    ctx.strokeStyle = GRID;
    ctx.beginPath();
    ctx.moveTo(plot.left, py);
    ctx.lineTo(plot.right, py);
    ctx.stroke();
    ctx.fillStyle = MUTED;
    ctx.fillText(format(Number(v.toPrecision(6))), plot.left - 6, py);
  }

  const slot = (plot.right - plot.left) / labels.length;
  const groups = spec.stacked ? 1 : series.length;
  const barWidth = Math.max(Math.min((slot * 0.7) / groups, 64), 2);
  let marks = 0;
  labels.forEach((label, i) => {
    const center = plot.left + slot * (i + 0.5);
    let base = 0;
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      const x = spec.stacked
        ? center - barWidth / 2
        : center - (barWidth * groups) / 2 + k * barWidth;
      const from = spec.stacked ? base : 0;
      if (v > 0) {
        ctx.fillStyle = s.color;
        ctx.fillRect(x, y(from + v), barWidth - (spec.stacked ? 0 : 1), y(from) - y(from + v));
        marks += 1;
      }
      if (!spec.stacked && v > 0) {
        ctx.fillStyle = TEXT;
        ctx.textAlign = 'center';
        ctx.fillText(format(v), x + barWidth / 2, y(v) - 8);
      }
      base += v;
    });
    if (spec.stacked && totals[i] > 0) {
      ctx.fillStyle = TEXT;
      ctx.textAlign = 'center';
      ctx.fillText(format(totals[i]), center, y(totals[i]) - 8);
    }
    ctx.fillStyle = TEXT;
    ctx.textAlign = 'center';
    ctx.fillText(label, center, plot.bottom + 12, slot - 2);
    if (spec.notes && spec.notes[i]) {
      ctx.fillStyle = MUTED;
      ctx.fillText(spec.notes[i], center, plot.bottom + 26, slot - 2);
    }
  });
  ctx.strokeStyle = MUTED;
  ctx.beginPath();
  ctx.moveTo(plot.left, Math.round(plot.bottom) + 0.5);
  ctx.lineTo(plot.right, Math.round(plot.bottom) + 0.5);
  ctx.stroke();
  finish(canvas, spec, summary, marks);
}

/** Donut chart. spec: {labels, values, colors, center, centerNote, title, empty}. */
export function donutChart(canvas, donut) {
  const spec = { ...donut, kind: 'donut' };
  const { ctx, width, height } = setup(canvas);
  const total = spec.values.reduce((a, b) => a + (b || 0), 0);
  const summary = `${spec.title || 'Chart'}: ${spec.labels
    .map((l, i) => `${l} ${spec.values[i] || 0}`)
    .join(', ')}`;
  if (!(total > 0)) {
    emptyMessage(ctx, width, height, spec.empty || 'No data yet');
    finish(canvas, spec, `${spec.title || 'Chart'}: no data yet`, 0);
    return;
  }
  const radius = Math.max(Math.min(height / 2 - 12, width / 3 - 12), 30);
  const cx = 16 + radius;
  const cy = height / 2;
  let angle = -Math.PI / 2;
  let marks = 0;
  spec.values.forEach((v, i) => {
    if (!(v > 0)) return;
    const sweep = (v / total) * Math.PI * 2;
    ctx.beginPath();
    ctx.moveTo(cx, cy);
    ctx.arc(cx, cy, radius, angle, angle + sweep);
    ctx.closePath();
    ctx.fillStyle = spec.colors[i];
    ctx.fill();
    angle += sweep;
    marks += 1;
  });
  // The hole, then the figure in it.
  ctx.beginPath();
  ctx.arc(cx, cy, radius * 0.6, 0, Math.PI * 2);
  ctx.fillStyle = '#fff';
  ctx.fill();
  ctx.textAlign = 'center';
  ctx.fillStyle = TEXT;
  ctx.font = `bold 22px system-ui, sans-serif`;
  ctx.fillText(spec.center || '', cx, cy - (spec.centerNote ? 8 : 0));
  ctx.font = FONT;
  if (spec.centerNote) {
    ctx.fillStyle = MUTED;
    ctx.fillText(spec.centerNote, cx, cy + 14);
  }
  // Legend on the right: colour, label, count and share.
  ctx.textAlign = 'left';
  const lx = cx + radius + 24;
  spec.labels.forEach((label, i) => {
    const ly = cy - ((spec.labels.length - 1) * 20) / 2 + i * 20;
    const v = spec.values[i] || 0;
    ctx.fillStyle = spec.colors[i];
    ctx.fillRect(lx, ly - 6, 12, 12);
    ctx.fillStyle = TEXT;
    ctx.fillText(`${label}  ${v}  (${Math.round((v / total) * 100)}%)`, lx + 18, ly, width - lx - 20);
  });
  finish(canvas, spec, summary, marks);
}

let resizeTimer = null;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const [canvas, spec] of drawn) {
      if (!canvas.isConnected) drawn.delete(canvas);
      else if (spec.kind === 'donut') donutChart(canvas, spec);
      else barChart(canvas, spec);
    }
  }, 150);
});
