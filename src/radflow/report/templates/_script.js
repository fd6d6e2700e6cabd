(function () {
  "use strict";
  function cellValue(row, index) {
    var cell = row.cells[index];
    var text = cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : "";
    var number = parseFloat(text);
    return isNaN(number) || !/^[-+]?[0-9.]/.test(text) ? text.toLowerCase() : number;
  }
  function sortTable(table, index, header) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (x === y) { return 0; }
      if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) {
      cell.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var head = table.tHead;
    if (!head || !head.rows.length) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (header, index) {
      header.title = "click to sort";
      header.addEventListener("click", function () { sortTable(table, index, header); });
    });
  });
  var browser = document.getElementById("case-browser");
  if (browser) {
    var outcome = document.getElementById("case-filter-outcome");
    var label = document.getElementById("case-filter-label");
    var counter = document.getElementById("case-count");
    var apply = function () {
      var shown = 0;
      Array.prototype.forEach.call(browser.querySelectorAll(".case"), function (card) {
        var ok = (outcome.value === "all" || card.getAttribute("data-outcome") === outcome.value) &&
          (label.value === "" || card.getAttribute("data-label") === label.value);
        card.hidden = !ok;
        if (ok) { shown += 1; }
      });
      counter.textContent = String(shown);
    };
    outcome.addEventListener("change", apply);
    label.addEventListener("change", apply);
    apply();
  }
  window.addEventListener("load", function () {
    document.documentElement.setAttribute("data-render-ms", String(Math.round(performance.now())));
    document.documentElement.setAttribute("data-ready", "1");
  });
}());
