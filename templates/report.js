/* gradaudit report: status filters, search, fold/unfold all, copy buttons, open on link. No network. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gradaudit-data").textContent);
  var chips = Array.prototype.slice.call(document.querySelectorAll("[data-filter-status]"));
  var search = document.getElementById("search");
  var showing = document.getElementById("showing");
  var results = Array.prototype.slice.call(document.querySelectorAll("details.result"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.case-row"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("details.group"));
  var bodies = Array.prototype.slice.call(document.querySelectorAll("tbody.group-rows"));
  var foldButton = document.getElementById("fold-all");

  function activeStatuses() {
    var on = {};
    chips.forEach(function (chip) {
      if (chip.getAttribute("aria-pressed") === "true") { on[chip.getAttribute("data-filter-status")] = true; }
    });
    return on;
  }

  function matches(el, query) {
    return !query || el.getAttribute("data-search").indexOf(query) !== -1;
  }

  function apply() {
    var on = activeStatuses();
    var query = search.value.trim().toLowerCase();
    var shown = 0;
    // Count what stays visible per group and per table section, instead of querying the DOM again.
    var groupShown = new Map(), bodyShown = new Map();
    results.forEach(function (el) {
      var visible = on[el.getAttribute("data-status")] === true && matches(el, query);
      if (el.hidden === visible) { el.hidden = !visible; }
      if (visible) {
        shown += 1;
        groupShown.set(el.parentElement, true);
      }
    });
    rows.forEach(function (row) {
      var statuses = row.getAttribute("data-statuses").split(" ");
      var any = statuses.some(function (s) { return on[s] === true; });
      var visible = any && matches(row, query);
      if (row.hidden === visible) { row.hidden = !visible; }
      if (visible) { bodyShown.set(row.parentElement, true); }
    });
    bodies.forEach(function (body) { body.hidden = !bodyShown.has(body); });
    groups.forEach(function (group) { group.hidden = !groupShown.has(group); });
    showing.textContent = shown === data.total ? "Showing all " + data.total + " results"
      : "Showing " + shown + " of " + data.total + " results";
  }

  function setChips(statuses) {
    chips.forEach(function (chip) {
      var on = statuses === null || statuses.indexOf(chip.getAttribute("data-filter-status")) !== -1;
      chip.setAttribute("aria-pressed", on ? "true" : "false");
    });
    apply();
  }

  chips.forEach(function (chip) {
    chip.addEventListener("click", function () {
      chip.setAttribute("aria-pressed", chip.getAttribute("aria-pressed") === "true" ? "false" : "true");
      apply();
    });
  });
  document.getElementById("problems-only").addEventListener("click", function () { setChips(data.problems); });
  document.getElementById("show-all").addEventListener("click", function () {
    search.value = "";
    setChips(null);
  });
  search.addEventListener("input", apply);

  function syncFoldButton() {
    var anyClosed = results.some(function (el) { return !el.hidden && !el.open; });
    foldButton.textContent = anyClosed ? "Unfold all" : "Fold all";
  }
  foldButton.addEventListener("click", function () {
    var open = foldButton.textContent === "Unfold all";
    results.forEach(function (el) { if (!el.hidden) { el.open = open; } });
    groups.forEach(function (el) { el.open = true; });
    syncFoldButton();
  });
  results.forEach(function (el) { el.addEventListener("toggle", syncFoldButton); });

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
  Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
    button.addEventListener("click", function () {
      var text = button.previousElementSibling.textContent;
      function done(ok) {
        button.textContent = ok ? "Copied" : "Select and copy";
        window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done(true); },
          function () { done(fallbackCopy(text)); });
      } else {
        done(fallbackCopy(text));
      }
    });
  });

  // A link to a result (from the table, or a URL with #anchor) opens it and everything around it.
  function reveal() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var target = id ? document.getElementById(id) : null;
    if (!target) { return; }
    for (var el = target; el; el = el.parentElement) {
      if (el.tagName === "DETAILS") { el.open = true; }
      if (el.hidden) { el.hidden = false; }
    }
    target.scrollIntoView({block: "start"});
  }
  window.addEventListener("hashchange", reveal);
  reveal();
  apply();
  syncFoldButton();
})();
