// A link of the form /kinfra/login#<token> logs in at once: the fragment never reaches the
// server's logs or the browser's history, and is removed from the address bar.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const token = decodeURIComponent(location.hash.slice(1));
  if (token) {
    history.replaceState(null, "", location.pathname);
    document.getElementById("token").value = token;
    document.getElementById("login").submit();
  }
});
