/* gradaudit report: lays out the results table and each result's details from the page's data, as
   they are scrolled to or opened, so the page stays light at any size; filters by status, baseline
   and cause; searches names, finding IDs, file:line, messages, devices and statuses; keys: / to
   search, j/k for the next and previous cause. User text only ever goes in as text, never as HTML.
   No network. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gradaudit-data").textContent);
  var results = data.results, rows = data.rows, devices = data.devices;
  var PAGE = 100;  // rows laid out at a time
  var SVG = "http://www.w3.org/2000/svg";
  var tbody = document.getElementById("rows");
  var table = document.getElementById("results-table");
  var search = document.getElementById("search");
  var showing = document.getElementById("showing");
  var empty = document.getElementById("empty");
  var more = document.getElementById("more");
  var moreButton = document.getElementById("more-button");
  var pill = document.getElementById("cause-pill");
  var controls = document.getElementById("controls");
  var chips = Array.prototype.slice.call(document.querySelectorAll("[data-filter-status]"));
  var baselineChips = Array.prototype.slice.call(document.querySelectorAll("[data-filter-baseline]"));
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.cause"));
  var byAnchor = {}, rowOf = [];
  results.forEach(function (r, j) { byAnchor[r.anchor] = j; });
  rows.forEach(function (row, i) { row.cells.forEach(function (j) { if (j >= 0) { rowOf[j] = i; } }); });
  var state = {cause: -1, problemsOnly: false};
  var visible = [];     // indices of the rows that match, in order
  var laidOut = 0;      // how many of them are in the table
  var rowElements = {}; // row index -> its <tr>
  var opened = {};      // result index -> true while its details are open
  var matching = [];    // result index -> whether it passes the filters and the search
  var current = -1;     // the cause card j/k last moved to

  // -- building blocks ---------------------------------------------------------------------------
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i += 1) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return parent;
  }
  // Message pieces alternate text, code, text, ...
  function rich(parent, parts) {
    (parts || []).forEach(function (piece, i) {
      if (piece) { add(parent, i % 2 ? el("code", null, piece) : piece); }
    });
    return parent;
  }
  // A long name may break after each underscore (phones), and reads back unchanged.
  function wrapped(parent, text) {
    var parts = text.split("_");
    parts.forEach(function (part, i) {
      if (i) { add(parent, el("wbr")); }
      add(parent, part + (i < parts.length - 1 ? "_" : ""));
    });
    return parent;
  }
  function badgeLabel(r) { return r.key === "expected" ? r.status + " (expected)" : r.status; }
  function mark(r) {
    return r.bl ? el("span", "mark bl-" + r.bl, data.baselineLabels[r.bl] || r.bl) : null;
  }
  function pre(cls, text, label) {
    var node = el("pre", cls, text);
    node.tabIndex = 0;  // keyboard-scrollable
    if (label) { node.setAttribute("aria-label", label); }
    return node;
  }
  // A container that scrolls sideways says so where it does.
  function markScroll(box) {
    var hint = box.previousElementSibling;
    var wide = box.scrollWidth > box.clientWidth + 1;
    if (hint && hint.classList.contains("scroll-hint")) { hint.hidden = !wide; return; }
    if (wide) { box.parentNode.insertBefore(el("p", "scroll-hint", "↔ scroll sideways for more"), box); }
  }

  // -- one result's details ------------------------------------------------------------------------
  function source(lines, where) {
    var block = pre("src", null, "source around " + where);
    lines.forEach(function (line) {
      var span = el("span", "line" + (line[2] ? " culprit" : ""));
      add(span, el("span", "ln", String(line[0])));
      var mk = el("span", "mk", line[2] ? "▶" : " ");
      mk.setAttribute("aria-hidden", "true");
      add(span, mk, line[2] ? el("span", "sr", "culprit line: ") : null, el("span", "code", line[1]));
      add(block, span);
    });
    return block;
  }
  function trace(title, runs, open) {
    var box = el("details", "trace");
    box.open = !!open;
    add(box, el("summary", null, title));
    var body = el("div", "tb");
    runs.forEach(function (run) {
      if (!run[0]) { add(body, pre("tb-lines", run[1])); return; }
      var fold = el("details", "fold");
      add(fold, el("summary", null, run[0]), pre("tb-lines", run[1]));
      add(body, fold);
    });
    return add(box, body);
  }
  function gradMap(m) {
    var figure = el("figure", "map");
    var pic = svg("svg", {"class": "gmap", role: "img", viewBox: "0 0 " + m.cols + " " + m.rows, width: m.w,
                          height: m.h, preserveAspectRatio: "none"});
    var title = svg("title", {});
    title.textContent = m.caption;
    add(pic, title, svg("rect", {"class": "alive", width: m.cols, height: m.rows}));
    if (m.dead) { add(pic, svg("path", {"class": "dead", d: m.dead})); }
    if (m.partial) { add(pic, svg("path", {"class": "partial", d: m.partial})); }
    if (m.grid) { add(pic, svg("path", {"class": "grid", d: m.grid})); }
    return add(figure, pic, el("figcaption", null, m.caption));
  }
  function inputs(list) {
    var box = el("div", "scroll");
    box.tabIndex = 0;
    box.setAttribute("role", "region");
    box.setAttribute("aria-label", "inputs (scrolls sideways)");
    var tableNode = el("table", "inputs");
    var head = el("tr");
    ["input", "shape", "dtype", "gradient", "never gets one", "gradient norm"].forEach(function (h) {
      var th = el("th", null, h);
      th.scope = "col";
      add(head, th);
    });
    add(tableNode, add(el("thead"), head));
    var bodyNode = el("tbody");
    list.forEach(function (item) {
      var tr = el("tr");
      var name = el("th");
      name.scope = "row";
      add(name, el("code", null, item.name));
      var badge = el("span", "badge st-" + (data.gradClass[item.grad] || "skip"));
      var icon = el("span", "icon", data.gradIcon[item.grad] || "–");
      icon.setAttribute("aria-hidden", "true");
      add(badge, icon, " " + item.grad);
      var norm = el("td", "norm");
      if (item.bar !== undefined) {
        var bar = svg("svg", {"class": "bar", role: "img", viewBox: "0 0 100 1", preserveAspectRatio: "none",
                              "aria-label": "gradient norm " + item.norm + ", " + Math.round(item.bar) +
                              "% of the largest"});
        add(bar, svg("rect", {width: item.bar, height: 1}));
        add(norm, bar, " ");
      }
      add(norm, el("span", "num", item.norm));
      add(tr, name, el("td", null, item.shape), el("td", null, item.dtype), add(el("td"), badge),
          el("td", "num", item.zero), norm);
      add(bodyNode, tr);
    });
    add(box, add(tableNode, bodyNode));
    return box;
  }
  function copyLine(text, what) {
    var line = el("div", "copyline");
    var button = el("button", "copy", "Copy");
    button.type = "button";
    button.title = "Copy " + what;
    return add(line, el("code", null, text), button);
  }
  function details(r) {
    var body = el("div", "body");
    body.id = r.anchor;
    var head = el("p", "body-head");
    add(head, el("span", "name", r.case), " ", el("span", "device", "[" + r.device + "]"));
    add(body, head);
    if (r.findings) {
      add(body, el("h4", null, "Findings"));
      var list = el("ol", "findings");
      r.findings.forEach(function (f) {
        var item = el("li", "finding sev-" + f.sev);
        add(item, add(el("p"), el("span", "sev", f.sev), " ", el("code", "fid", f.id),
                      f.input ? " " : null, f.input ? el("span", "input", "on " + f.input) : null));
        add(item, rich(el("p", "message"), f.msg));
        if (f.where) {
          add(item, add(el("p", "where"), "at ", el("code", null, f.where), f.same ? " (the line shown above)" : null));
          if (f.src && f.src.length) { add(item, source(f.src, f.where)); }
          if (f.second) { add(item, el("p", "where second", f.second)); }
          if (f.chain) {
            var chain = el("details", "chain");
            add(chain, el("summary", null, "called from (" + f.chain.length + " frame" +
                          (f.chain.length !== 1 ? "s" : "") + ")"));
            var frames = el("ol");
            f.chain.slice().reverse().forEach(function (frame) { add(frames, add(el("li"), el("code", null, frame))); });
            add(item, add(chain, frames));
          }
        }
        add(list, item);
      });
      add(body, list);
    }
    if (r.skip) { add(body, el("p", "skip-reason", "Skipped: " + r.skip)); }
    if (r.error) {
      add(body, el("h4", null, "Error"));
      add(body, add(el("p", "error-line"), el("code", null, r.error.type), ": " + r.error.msg));
      if (r.error.tb) { add(body, trace("Traceback (your frames shown, the others folded)", r.error.tb, r.error.open)); }
      if (r.error.anomaly) { add(body, trace("Forward trace recorded by anomaly mode", r.error.anomaly, false)); }
    }
    if (r.warnings) {
      add(body, el("h4", null, "Warnings the loss raised"));
      var warnings = el("ul", "warnings");
      r.warnings.forEach(function (w) { add(warnings, add(el("li"), el("code", null, w))); });
      add(body, warnings);
    }
    if (r.inputs) {
      add(body, el("h4", null, "Inputs"), inputs(r.inputs));
      r.inputs.forEach(function (item) { if (item.map) { add(body, gradMap(item.map)); } });
    }
    if (r.loss) { add(body, add(el("p", "loss"), "Loss: ", el("code", null, r.loss))); }
    if (r.reproduce) {
      add(body, add(el("div", "reproduce"), el("span", "label", "Reproduce"), " ",
                    copyLine(r.reproduce, "the reproduce command")));
    }
    var facts = el("p", "facts-line");
    (r.facts || []).forEach(function (f) { add(facts, add(el("span"), f[0] + " ", el("code", null, f[1]))); });
    add(body, facts);
    return body;
  }

  // -- the table -----------------------------------------------------------------------------------
  function cell(j, d) {
    var td = el("td", "cell");
    td.setAttribute("data-device", devices[d]);
    if (j < 0) { return add(td, el("span", "none", "not run")); }
    var r = results[j];
    td.setAttribute("data-status", r.key);
    if (!matching[j]) { td.className = "cell off"; }  // in a shown row, but filtered out: dimmed
    var button = el("button", "badge st-" + r.key);
    button.type = "button";
    button.setAttribute("data-result", j);
    button.setAttribute("aria-expanded", opened[j] ? "true" : "false");
    button.setAttribute("aria-controls", r.anchor);
    button.title = (opened[j] ? "Hide" : "Show") + " the details of " + r.case + " [" + r.device + "]";
    var icon = el("span", "icon", data.statusIcon[r.key] || "?");
    icon.setAttribute("aria-hidden", "true");
    add(button, icon, " " + badgeLabel(r));
    return add(td, button, r.bl ? " " : null, mark(r));
  }
  function rowElement(i) {
    var row = rows[i];
    var tr = el("tr", "case-row");
    tr.setAttribute("data-row", i);
    var first = results[row.cells.filter(function (j) { return j >= 0; })[0]];
    var th = el("th");
    th.scope = "row";
    add(tr, add(th, wrapped(el("span", "name"), first.case)));
    row.cells.forEach(function (j, d) { add(tr, cell(j, d)); });
    add(tr, rich(el("td", "what"), row.what));
    return tr;
  }
  function bodyRow(j) {
    var tr = el("tr", "body-row");
    tr.setAttribute("data-result", j);
    var td = el("td");
    td.colSpan = devices.length + 2;
    add(tr, add(td, details(results[j])));
    return tr;
  }
  // Insert an open result's details under its case row, in device order.
  function placeBody(j) {
    var tr = rowElements[rowOf[j]];
    if (!tr) { return null; }
    var after = tr;
    while (after.nextElementSibling && after.nextElementSibling.classList.contains("body-row") &&
           Number(after.nextElementSibling.getAttribute("data-result")) < j) {
      after = after.nextElementSibling;
    }
    var node = bodyRow(j);
    tbody.insertBefore(node, after.nextElementSibling);
    node.querySelectorAll(".scroll").forEach(markScroll);
    return node;
  }
  function toggle(j, open) {
    var want = open === undefined ? !opened[j] : open;
    if (want === !!opened[j]) { return; }
    var r = results[j];
    if (want) {
      opened[j] = true;
      placeBody(j);
    } else {
      delete opened[j];
      var node = document.getElementById(r.anchor);
      if (node) { tbody.removeChild(node.closest("tr")); }
    }
    var button = tbody.querySelector('button[data-result="' + j + '"]');
    if (button) {
      button.setAttribute("aria-expanded", want ? "true" : "false");
      button.title = (want ? "Hide" : "Show") + " the details of " + r.case + " [" + r.device + "]";
    }
  }
  function layOutMore() {
    var end = Math.min(visible.length, laidOut + PAGE);
    var fragment = document.createDocumentFragment();
    var fresh = [];
    for (var n = laidOut; n < end; n += 1) {
      var i = visible[n];
      rowElements[i] = rowElement(i);
      fragment.appendChild(rowElements[i]);
      fresh.push(i);
    }
    tbody.appendChild(fragment);
    laidOut = end;
    fresh.forEach(function (i) {
      rows[i].cells.forEach(function (j) { if (j >= 0 && opened[j]) { placeBody(j); } });
    });
    var left = visible.length - laidOut;
    more.hidden = left <= 0;
    moreButton.textContent = "Show " + Math.min(PAGE, left) + " more (" + left + " left)";
  }

  // -- filters and search --------------------------------------------------------------------------
  function searchText(r) {
    if (r.q === undefined) {
      var bits = [r.case, r.device, r.status, r.key === "expected" ? "expected" : "",
                  r.bl ? data.baselineLabels[r.bl] || r.bl : "", r.blkey === "new" ? "new failure" : "",
                  (r.what || []).join(""), r.skip || ""];
      (r.findings || []).forEach(function (f) { bits.push(f.id, f.where || "", f.input || "", f.msg.join("")); });
      if (r.error) { bits.push(r.error.type, r.error.msg); }
      (r.facts || []).forEach(function (f) { bits.push(f[1]); });
      r.q = bits.join("\n").toLowerCase();
    }
    return r.q;
  }
  function pressed(list, attribute) {
    var on = {}, any = false;
    list.forEach(function (chip) {
      if (chip.getAttribute("aria-pressed") === "true") { on[chip.getAttribute(attribute)] = true; any = true; }
    });
    return any ? on : null;
  }
  function apply() {
    var statuses = pressed(chips, "data-filter-status") || {};
    var marks = pressed(baselineChips, "data-filter-baseline");
    var words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    visible = [];
    rows.forEach(function (row, i) {
      var any = false;
      row.cells.forEach(function (j) {
        if (j < 0) { return; }
        var r = results[j];
        matching[j] = false;
        if (statuses[r.key] !== true || (marks && marks[r.blkey] !== true) ||
            (state.cause >= 0 && r.cause !== state.cause)) { return; }
        if (words.length) {
          var text = searchText(r);
          for (var w = 0; w < words.length; w += 1) { if (text.indexOf(words[w]) === -1) { return; } }
        }
        matching[j] = true;
        any = true;
        shown += 1;
      });
      if (any) { visible.push(i); }
    });
    tbody.textContent = "";
    rowElements = {};
    laidOut = 0;
    layOutMore();
    table.hidden = visible.length === 0;
    empty.hidden = visible.length !== 0;
    if (!visible.length) {
      empty.textContent = state.problemsOnly && !words.length && state.cause < 0 && !marks
        ? "No problems: nothing failed, errored, crashed, timed out or warned."
        : "No result matches: clear the search or press Show all.";
    }
    showing.textContent = shown === data.total ? "Showing all " + data.total + " results"
      : "Showing " + shown + " of " + data.total + " results";
    pill.hidden = state.cause < 0;
    watch();
    if (state.cause >= 0) { document.getElementById("cause-name").textContent = data.causes[state.cause]; }
  }
  function setChips(statuses) {
    chips.forEach(function (chip) {
      var on = statuses === null || statuses.indexOf(chip.getAttribute("data-filter-status")) !== -1;
      chip.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }
  function showAll() {
    search.value = "";
    state.cause = -1;
    state.problemsOnly = false;
    setChips(null);
    baselineChips.forEach(function (chip) { chip.setAttribute("aria-pressed", "false"); });
    apply();
  }

  chips.forEach(function (chip) {
    chip.addEventListener("click", function () {
      chip.setAttribute("aria-pressed", chip.getAttribute("aria-pressed") === "true" ? "false" : "true");
      state.problemsOnly = false;
      apply();
    });
  });
  baselineChips.forEach(function (chip) {
    chip.addEventListener("click", function () {
      chip.setAttribute("aria-pressed", chip.getAttribute("aria-pressed") === "true" ? "false" : "true");
      apply();
    });
  });
  document.getElementById("problems-only").addEventListener("click", function () {
    setChips(data.problems);
    state.problemsOnly = true;
    apply();
  });
  document.getElementById("show-all").addEventListener("click", showAll);
  document.getElementById("cause-clear").addEventListener("click", function () { state.cause = -1; apply(); });
  search.addEventListener("input", apply);
  moreButton.addEventListener("click", layOutMore);
  // More rows as the end of the table comes near; watched afresh after each filter, so a short
  // result that leaves the end in view still gets its next page.
  var observer = window.IntersectionObserver ? new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && !more.hidden) { layOutMore(); }
  }, {rootMargin: "800px 0px"}) : null;
  function watch() {
    if (observer) { observer.unobserve(more); observer.observe(more); }
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-cause-filter]"), function (button) {
    button.addEventListener("click", function () {
      state.cause = Number(button.getAttribute("data-cause-filter"));
      apply();
      controls.scrollIntoView({block: "start"});
    });
  });
  tbody.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-result]");
    if (button) { toggle(Number(button.getAttribute("data-result"))); }
  });

  // -- copy buttons ----------------------------------------------------------------------------------
  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (!button) { return; }
    var text = button.previousElementSibling.textContent;
    function done(ok) {
      button.textContent = ok ? "Copied" : "Select and copy";
      window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(fallbackCopy(text)); });
    } else {
      done(fallbackCopy(text));
    }
  });

  // -- links to a result: from a cause card, or a URL with #anchor ----------------------------------
  function reveal(id) {
    var j = byAnchor[id];
    if (j === undefined) {
      var target = id ? document.getElementById(id) : null;
      if (target) { target.scrollIntoView({block: "start"}); }
      return;
    }
    var position = visible.indexOf(rowOf[j]);
    if (position === -1) {
      showAll();
      position = visible.indexOf(rowOf[j]);
    }
    if (position >= laidOut + 3 * PAGE) {
      // Far down a big table: show its case alone rather than lay out thousands of rows above it.
      search.value = results[j].case;
      apply();
      position = visible.indexOf(rowOf[j]);
    }
    while (laidOut <= position) { layOutMore(); }
    toggle(j, true);
    var body = document.getElementById(id);
    body.scrollIntoView({block: "start"});
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest('a[href^="#r-"]');
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) { return; }
    event.preventDefault();
    var id = decodeURIComponent(link.getAttribute("href").slice(1));
    if (window.location.hash !== "#" + id) { window.history.pushState(null, "", "#" + id); }
    reveal(id);
  });
  window.addEventListener("hashchange", function () { reveal(decodeURIComponent(window.location.hash.slice(1))); });

  // -- keys: / to search, j/k for the next and previous cause ---------------------------------------
  function moveTo(step) {
    if (!cards.length) { return; }
    current = current < 0 ? (step > 0 ? 0 : cards.length - 1)
      : Math.max(0, Math.min(cards.length - 1, current + step));
    cards.forEach(function (card, n) { card.classList.toggle("current", n === current); });
    cards[current].focus({preventScroll: true});
    cards[current].scrollIntoView({block: "start"});
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
    if (event.key === "Escape" && target === search) { search.blur(); return; }
    if (typing) { return; }
    if (event.key === "/") {
      event.preventDefault();
      search.focus();
      search.select();
    } else if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      moveTo(event.key === "j" ? 1 : -1);
    }
  });
  cards.forEach(function (card, n) { card.addEventListener("focusin", function () { current = n; }); });

  apply();
  markScroll(table.parentNode);
  if (window.location.hash) { reveal(decodeURIComponent(window.location.hash.slice(1))); }
})();
