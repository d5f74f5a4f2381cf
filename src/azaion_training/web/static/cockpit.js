// Pages with data-refresh="N" on <body> re-render their <main> every N seconds (no full reload).
(function () {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  setInterval(async function () {
    try {
      const response = await fetch(location.href, {headers: {"Accept": "text/html"}});
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("main");
      if (fresh) document.getElementById("main").replaceWith(fresh);
    } catch (error) { /* the server is restarting: try again next time */ }
  }, seconds * 1000);
})();
