"use strict";
// The key a person gives these pages: kept in this tab's sessionStorage (the home page and the
// replay page it opens share it), sent as Authorization: Bearer and never in a URL, asked for
// when the service answers 401 or 403, and forgotten on request. Inlined into both pages, as
// charts.js is, so each page's policy allows it by hash.
var pageKey = (function () {
  var stored = "run-registry-key";
  var forgottenFlag = "run-registry-key-forgotten";
  var form = document.getElementById("key-form");
  var given = function () {};

  function current() { return sessionStorage.getItem(stored); }
  function showHeld() { document.getElementById("key-held").hidden = !current(); }
  function ask(why) {
    document.getElementById("key-why").textContent = why;
    form.hidden = false;
    showHeld();
    document.body.setAttribute("data-key", "wanted");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var field = document.getElementById("key");
    sessionStorage.setItem(stored, field.value.trim());
    field.value = "";
    form.hidden = true;
    showHeld();
    document.body.setAttribute("data-key", "given");
    given();
  });
  // Forgetting the key: this tab keeps none, and the page starts again from the prompt, showing
  // nothing it read with the key.
  document.getElementById("forget-key").addEventListener("click", function () {
    sessionStorage.removeItem(stored);
    sessionStorage.setItem(forgottenFlag, "true");
    location.reload();
  });
  showHeld();

  return {
    current: current,
    // A request's headers, with the key when the tab holds one.
    headers: function (sent) {
      if (current()) { sent.Authorization = "Bearer " + current(); }
      return sent;
    },
    // Whether the prompt is up: a page says nothing else of a failure while it asks for a key.
    wanted: function () { return !form.hidden; },
    // What a page goes on with once a key is given.
    whenGiven: function (then) { given = then; },
    // A 401 or 403: say which it is, and what the service said, and ask for a key.
    refused: function (response, sentKey) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.status === 403) {
          ask("This key may not do that (403): " + (body.message || "it lacks a scope this needs") + ".");
        } else if (sentKey) {
          sessionStorage.removeItem(stored);  // a wrong key is no key: not sent again
          ask("That key was refused (401): check it and try again.");
        } else {
          ask("This service needs a key: give one to go on.");
        }
        throw new Error("HTTP " + response.status);
      });
    },
    // Right after "Forget key": ask for a key before anything else (true), once.
    justForgotten: function () {
      if (!sessionStorage.getItem(forgottenFlag)) { return false; }
      sessionStorage.removeItem(forgottenFlag);
      ask("Key forgotten: this tab keeps none now. Give a key to go on.");
      return true;
    }
  };
})();
