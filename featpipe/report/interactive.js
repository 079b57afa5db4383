/* featpipe report: interactive learning curves and seed-lottery spread (plain SVG, no library, no network).
 * Data: the JSON in <script type="application/json" id="featpipe-data"> (featpipe.report.interactive).
 * Each <div class="fp-chart" data-kind="curve|spread" data-fallback="ID"> becomes a chart: choose the metric,
 * show/hide configurations (legend checkboxes; hover a legend entry to highlight it), hover a point for its exact
 * values and n, drag a rectangle to zoom, double-click (or "reset zoom") to zoom out. The static image (element
 * ID) stays shown until the chart has rendered, and is shown again if the chart fails. */
(function () {
  'use strict';
  var src = document.getElementById('featpipe-data');
  if (!src) { return; }
  var D = JSON.parse(src.textContent);
  var NS = 'http://www.w3.org/2000/svg';
  var W = 760, H = 380, M = {l: 62, r: 16, t: 14, b: 46};

  function el(tag, attrs, parent, text) {
    var e = tag.charAt(0) === '#' ? document.createElementNS(NS, tag.slice(1)) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function finite(v) { return typeof v === 'number' && isFinite(v); }
  function fmt(v, metric, kind) {
    if (!finite(v)) { return '\u2013'; }
    if (kind === 'spread') { return (100 * v).toFixed(1) + ' points'; }
    return D.percent[metric] ? (100 * v).toFixed(1) + '%' : v.toFixed(3);
  }
  function xText(x) { return D.fraction ? (100 * x).toPrecision(3).replace(/\.?0+$/, '') + '%' : String(x); }

  function Chart(root) {
    this.root = root;
    this.kind = root.getAttribute('data-kind');
    this.metric = D.metric;
    this.hidden = {};
    this.zoom = null;
    this.highlight = null;
    this.bands = D.configs.length <= 4;
    this.build();
    this.render();
  }

  Chart.prototype.build = function () {
    var self = this, bar = el('div', {'class': 'fp-controls'}, this.root);
    el('label', {}, bar, this.kind === 'spread' ? 'metric (spread across seeds) ' : 'metric ');
    var sel = el('select', {'class': 'fp-metric'}, bar.lastChild);
    Object.keys(D.points).forEach(function (m) {
      var o = el('option', {value: m}, sel, D.labels[m] || m);
      if (m === self.metric) { o.selected = true; }
    });
    sel.addEventListener('change', function () { self.metric = sel.value; self.zoom = null; self.render(); });
    if (this.kind === 'curve') {
      var lb = el('label', {}, bar, ' ');
      var cb = el('input', {type: 'checkbox', 'class': 'fp-bands'}, lb);
      cb.checked = this.bands;
      lb.appendChild(document.createTextNode(' 95% intervals of every shown configuration'));
      cb.addEventListener('change', function () { self.bands = cb.checked; self.render(); });
    }
    var reset = el('button', {type: 'button', 'class': 'fp-reset'}, bar, 'reset zoom');
    reset.addEventListener('click', function () { self.zoom = null; self.render(); });
    ['all', 'none'].forEach(function (what) {
      var b = el('button', {type: 'button', 'class': 'fp-' + what}, bar, 'show ' + what);
      b.addEventListener('click', function () {
        D.configs.forEach(function (c) { self.hidden[c.name] = what === 'none'; });
        self.render();
      });
    });
    var wrap = el('div', {'class': 'fp-plot'}, this.root);
    this.svg = el('#svg', {viewBox: '0 0 ' + W + ' ' + H, width: '100%', role: 'img'}, wrap);
    this.tip = el('div', {'class': 'fp-tip'}, wrap);
    this.drag();
    this.legend = el('div', {'class': 'fp-legend'}, this.root);
    D.configs.forEach(function (c) {
      var item = el('label', {'class': 'fp-item', 'data-config': c.name}, self.legend);
      var box = el('input', {type: 'checkbox', 'class': 'fp-toggle'}, item);
      box.checked = true;
      el('span', {'class': 'fp-swatch', style: 'background:' + c.color}, item);
      el('span', {}, item, c.name);
      box.addEventListener('change', function () { self.hidden[c.name] = !box.checked; self.render(); });
      item.addEventListener('mouseenter', function () { self.highlight = c.name; self.render(); });
      item.addEventListener('mouseleave', function () { self.highlight = null; self.render(); });
    });
    el('p', {'class': 'note'}, this.root, 'Hover a point for its exact values; drag a rectangle to zoom, ' +
       'double-click to zoom out; hover a configuration in the legend to highlight it.');
  };

  Chart.prototype.series = function () {
    var self = this, table = D.points[this.metric] || {};
    return D.configs.filter(function (c) { return !self.hidden[c.name] && table[c.name]; }).map(function (c) {
      var pts = table[c.name].map(function (p) {
        var y = self.kind === 'spread' ? p.spread : p.mean;
        return {x: p.x, k: p.k, n: p.n, y: y, lo: self.kind === 'spread' ? y : p.lo, hi: self.kind === 'spread' ? y : p.hi,
                mean: p.mean, spread: p.spread};
      }).filter(function (p) { return finite(p.y); });
      return {config: c, points: pts};
    });
  };

  Chart.prototype.domain = function (all) {
    var xs = [], ys = [];
    all.forEach(function (s) { s.points.forEach(function (p) { xs.push(p.x); ys.push(p.lo, p.hi, p.y); }); });
    ys = ys.filter(finite);
    var off = D.zero ? 1 : 0, tx = function (x) { return Math.log(x + off); };
    var x0 = xs.length ? tx(Math.min.apply(null, xs)) : 0, x1 = xs.length ? tx(Math.max.apply(null, xs)) : 1;
    if (x1 - x0 < 1e-9) { x0 -= 0.5; x1 += 0.5; }
    var pad = (x1 - x0) * 0.04, y0, y1;
    if (this.kind === 'spread') { y0 = 0; y1 = Math.max(0.01, Math.max.apply(null, ys.concat([0])) * 1.08); }
    else if (D.bounded[this.metric]) { y0 = Math.max(0, Math.min.apply(null, ys.concat([1])) - 0.05); y1 = 1.0; }
    else { y0 = Math.min.apply(null, ys); y1 = Math.max.apply(null, ys); var d = (y1 - y0) * 0.05 || 0.05; y0 -= d; y1 += d; }
    return {tx: tx, x0: x0 - pad, x1: x1 + pad, y0: y0, y1: y1};
  };

  Chart.prototype.render = function () {
    var self = this, svg = this.svg, all = this.series(), d = this.domain(all), z = this.zoom || d;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var sx = function (x) { return M.l + (d.tx(x) - z.x0) / (z.x1 - z.x0) * pw; };
    var sy = function (y) { return M.t + (1 - (y - z.y0) / (z.y1 - z.y0)) * ph; };
    var id = 'fpclip' + Math.random().toString(36).slice(2);
    el('#rect', {x: M.l, y: M.t, width: pw, height: ph}, el('#clipPath', {id: id}, el('#defs', {}, svg)));
    var axes = el('#g', {'class': 'fp-axes', 'font-size': 11, fill: '#444'}, svg);
    for (var i = 0; i <= 5; i++) {
      var yv = z.y0 + (z.y1 - z.y0) * i / 5, yy = sy(yv);
      el('#line', {x1: M.l, x2: M.l + pw, y1: yy, y2: yy, stroke: '#e3e6ea'}, axes);
      el('#text', {x: M.l - 6, y: yy + 4, 'text-anchor': 'end'}, axes,
         this.kind === 'spread' ? (100 * yv).toFixed(1) : D.percent[this.metric] ? (100 * yv).toFixed(0) : yv.toFixed(2));
    }
    D.xs.forEach(function (x) {
      var xx = sx(x);
      if (xx < M.l - 1 || xx > M.l + pw + 1) { return; }
      el('#line', {x1: xx, x2: xx, y1: M.t, y2: M.t + ph, stroke: '#eef0f3'}, axes);
      el('#text', {x: xx, y: M.t + ph + 16, 'text-anchor': 'middle'}, axes, xText(x));
    });
    el('#rect', {x: M.l, y: M.t, width: pw, height: ph, fill: 'none', stroke: '#888'}, axes);
    el('#text', {x: M.l + pw / 2, y: H - 8, 'text-anchor': 'middle'}, axes, D.xlabel);
    var ylab = (D.labels[this.metric] || this.metric) + (this.kind === 'spread' ? ': spread across seeds (points)' :
      ' on test (mean' + (D.percent[this.metric] ? ', %' : '') + ')');
    el('#text', {x: 14, y: M.t + ph / 2, 'text-anchor': 'middle', transform: 'rotate(-90 14 ' + (M.t + ph / 2) + ')'}, axes, ylab);
    el('#rect', {'class': 'fp-overlay', x: M.l, y: M.t, width: pw, height: ph, fill: 'transparent'}, svg);
    var bands = el('#g', {'clip-path': 'url(#' + id + ')'}, svg), plot = el('#g', {'clip-path': 'url(#' + id + ')'}, svg);
    all.forEach(function (s) {
      var c = s.config, dim = self.highlight && self.highlight !== c.name;
      var g = el('#g', {'class': 'fp-series', 'data-config': c.name, opacity: dim ? 0.12 : 1}, plot);
      var pts = s.points.slice().sort(function (a, b) { return a.x - b.x; });
      if (self.kind === 'curve' && (self.bands || self.highlight === c.name) && pts.length && !dim) {
        var top = pts.map(function (p) { return sx(p.x) + ',' + sy(finite(p.hi) ? p.hi : p.y); });
        var bot = pts.slice().reverse().map(function (p) { return sx(p.x) + ',' + sy(finite(p.lo) ? p.lo : p.y); });
        el('#polygon', {'class': 'fp-band', 'data-config': c.name, points: top.concat(bot).join(' '), fill: c.color,
                        opacity: 0.13}, bands);
      }
      el('#polyline', {'class': 'fp-line', points: pts.map(function (p) { return sx(p.x) + ',' + sy(p.y); }).join(' '),
                       fill: 'none', stroke: c.color, 'stroke-width': self.highlight === c.name ? 3 : 1.8,
                       'stroke-dasharray': c.finetune ? '6 4' : 'none'}, g);
      pts.forEach(function (p) {
        var at = {'class': 'fp-point', fill: c.color, stroke: '#fff', 'data-config': c.name, 'data-k': p.k, 'data-y': p.y,
                  'data-n': p.n, 'data-marker': c.marker}, cx = sx(p.x), cy = sy(p.y), dot;
        if (c.marker === 'o') {
          at.cx = cx; at.cy = cy; at.r = 4.5;
          dot = el('#circle', at, g);
        } else {  // the figures' other markers: squares, triangles, diamonds... drawn as a polygon around the point
          var n = {s: 4, '^': 3, D: 4, v: 3, P: 8, X: 8}[c.marker] || 4, rot = {s: 45, D: 0, '^': -90, v: 90}[c.marker] || 0;
          at.points = Array.apply(null, Array(n)).map(function (_, i) {
            var a = (rot + 360 * i / n) * Math.PI / 180;
            return (cx + 5.5 * Math.cos(a)) + ',' + (cy + 5.5 * Math.sin(a));
          }).join(' ');
          at.cx = cx;
          dot = el('#polygon', at, g);
        }
        dot.addEventListener('mouseenter', function () { self.show(c, p, dot); });
        dot.addEventListener('mouseleave', function () { self.tip.style.display = 'none'; });
      });
    });
    this.geom = {pw: pw, ph: ph, z: z};
  };

  Chart.prototype.show = function (c, p, dot) {
    var t = this.tip, m = this.metric, rows = [c.name, (D.fraction ? 'fraction ' + xText(p.x) + ' (' + p.k + ' images)' : p.k + ' shots')];
    if (this.kind === 'spread') {
      rows.push('spread of ' + (D.labels[m] || m) + ': ' + fmt(p.spread, m, 'spread'), 'mean: ' + fmt(p.mean, m));
    } else {
      rows.push((D.labels[m] || m) + ': ' + fmt(p.mean, m), '95% interval: [' + fmt(p.lo, m) + ', ' + fmt(p.hi, m) + ']',
                'spread: ' + fmt(p.spread, m, 'spread'));
    }
    rows.push('n = ' + p.n + ' seeds');
    while (t.firstChild) { t.removeChild(t.firstChild); }
    rows.forEach(function (r, i) { el(i ? 'div' : 'b', {}, t, r); });
    var box = this.svg.getBoundingClientRect(), b = dot.getBoundingClientRect();
    t.style.left = Math.min(b.left - box.left + 12, box.width - 220) + 'px';
    t.style.top = (b.top - box.top + 12) + 'px';
    t.style.display = 'block';
  };

  Chart.prototype.drag = function () {
    var self = this, svg = this.svg, start = null, rect = null;
    function pos(ev) {
      var r = svg.getBoundingClientRect(), k = W / r.width, pw = self.geom.pw, ph = self.geom.ph;
      return {x: Math.max(M.l, Math.min(M.l + pw, (ev.clientX - r.left) * k)),
              y: Math.max(M.t, Math.min(M.t + ph, (ev.clientY - r.top) * k))};
    }
    svg.addEventListener('mousedown', function (ev) {
      if (!ev.target.classList.contains('fp-overlay')) { return; }
      start = pos(ev);
      rect = el('#rect', {'class': 'fp-zoombox', x: start.x, y: start.y, width: 0, height: 0, fill: 'rgba(29,53,87,.12)',
                          stroke: '#1d3557'}, svg);
      ev.preventDefault();
    });
    svg.addEventListener('mousemove', function (ev) {
      if (!start) { return; }
      var p = pos(ev);
      rect.setAttribute('x', Math.min(p.x, start.x)); rect.setAttribute('width', Math.abs(p.x - start.x));
      rect.setAttribute('y', Math.min(p.y, start.y)); rect.setAttribute('height', Math.abs(p.y - start.y));
    });
    svg.addEventListener('mouseup', function (ev) {
      if (!start) { return; }
      var p = pos(ev), a = start;
      start = null;
      if (Math.abs(p.x - a.x) < 6 || Math.abs(p.y - a.y) < 6) { rect.remove(); return; }
      var z = self.geom.z, pw = self.geom.pw, ph = self.geom.ph;
      var ix = function (v) { return z.x0 + (v - M.l) / pw * (z.x1 - z.x0); };
      var iy = function (v) { return z.y0 + (1 - (v - M.t) / ph) * (z.y1 - z.y0); };
      self.zoom = {x0: ix(Math.min(a.x, p.x)), x1: ix(Math.max(a.x, p.x)), y0: iy(Math.max(a.y, p.y)), y1: iy(Math.min(a.y, p.y))};
      self.render();
    });
    svg.addEventListener('dblclick', function () { self.zoom = null; self.render(); });
  };

  Array.prototype.forEach.call(document.querySelectorAll('div.fp-chart'), function (root) {
    var fallback = document.getElementById(root.getAttribute('data-fallback'));
    try {
      root.chart = new Chart(root);
      root.setAttribute('data-rendered', 'true');
      if (fallback) { fallback.style.display = 'none'; }
    } catch (err) {
      root.style.display = 'none';
      if (fallback) { fallback.style.display = ''; }
      throw err;
    }
  });
}());
