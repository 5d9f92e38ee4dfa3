// Keeps the elements marked data-k up to date from the JSON counters of the nearest
// data-live section's URL (the overview polls /ui/overview.json every two seconds).
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live) { return; }
  var url = live.getAttribute("data-live");
  function lookup(data, path) {
    return path.split(".").reduce(function (v, k) { return v == null ? v : v[k]; }, data);
  }
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        document.querySelectorAll("[data-k]").forEach(function (el) {
          var v = lookup(data, el.getAttribute("data-k"));
          if (v != null) { el.textContent = String(v); }
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);
})();
