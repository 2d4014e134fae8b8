// kms-broker console: progressive enhancement only. Every page works without this file; the server checks
// everything again (confirmations, permissions, CSRF). No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";

  // A dangerous button stays disabled until the confirmation field names the thing exactly.
  function confirmations() {
    document.querySelectorAll("input[data-must-equal]").forEach(function (input) {
      var button = document.getElementById(input.dataset.enables);
      if (!button || button.hasAttribute("data-never")) { return; }
      var sync = function () {
        var ok = input.value.trim() === input.dataset.mustEqual;
        button.disabled = !ok;
        button.setAttribute("aria-disabled", ok ? "false" : "true");
      };
      input.addEventListener("input", sync);
      sync();
    });
  }

  // The create form offers only what the chosen provider can do (its capabilities, sent by the server).
  function createForm() {
    var form = document.getElementById("create-form");
    if (!form) { return; }
    var specs = JSON.parse(form.dataset.specs || "{}");
    var provider = document.getElementById("provider");
    var spec = document.getElementById("spec");
    var usage = document.getElementById("usage");
    var sync = function () {
      var offered = specs[provider.value] || {};
      Array.prototype.forEach.call(spec.options, function (o) {
        o.hidden = o.disabled = !(o.value in offered);
      });
      if (spec.selectedOptions.length && spec.selectedOptions[0].disabled) {
        var first = Array.prototype.find.call(spec.options, function (o) { return !o.disabled; });
        if (first) { spec.value = first.value; }
      }
      var usages = offered[spec.value] || [];
      Array.prototype.forEach.call(usage.options, function (o) {
        o.hidden = o.disabled = o.value !== "" && usages.indexOf(o.value) < 0;
      });
      if (usage.selectedOptions.length && usage.selectedOptions[0].disabled) { usage.value = ""; }
    };
    provider.addEventListener("change", sync);
    spec.addEventListener("change", sync);
    sync();
  }

  // A policy validation error: put the caret on the line the error names.
  function policyError() {
    var area = document.querySelector("textarea[data-error-line]");
    if (!area) { return; }
    var line = parseInt(area.dataset.errorLine, 10), lines = area.value.split("\n"), start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) { start += lines[i].length + 1; }
    area.focus();
    area.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  // Copy a value shown once (a new token) without selecting it by hand.
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var source = document.getElementById(button.dataset.copy);
        if (source && navigator.clipboard) { navigator.clipboard.writeText(source.textContent.trim()); }
      });
    });
  }

  // The audit stream refreshes itself while "live" is checked (same filters, first page).
  function liveAudit() {
    var box = document.getElementById("live");
    var body = document.getElementById("audit-rows");
    if (!box || !body) { return; }
    var timer = null;
    var tick = function () {
      fetch(body.dataset.src, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { body.innerHTML = html; } })
        .catch(function () {});
    };
    var sync = function () {
      if (timer) { clearInterval(timer); timer = null; }
      if (box.checked) { timer = setInterval(tick, 3000); }
    };
    box.addEventListener("change", sync);
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmations(); createForm(); policyError(); copyButtons(); liveAudit();
  });
})();
