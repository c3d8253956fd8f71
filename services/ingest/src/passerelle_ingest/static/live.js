// Live counts without reloading: a part of the page marked data-live="URL" is fetched
// again every few seconds (the server renders it, translated) until it says it is done.
// Times in <time datetime> are also shown in the reader's own time zone.
(() => {
  'use strict';

  const lang = document.documentElement.lang;

  function localTimes(root) {
    if (!window.Intl) {
      return;
    }
    const format = new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' });
    for (const node of root.querySelectorAll('time[datetime]')) {
      const when = new Date(node.getAttribute('datetime'));
      if (!Number.isNaN(when.getTime())) {
        node.textContent = format.format(when);
      }
    }
  }

  localTimes(document);
  let part = document.querySelector('[data-live]');
  if (!part || part.dataset.liveDone === 'true') {
    return;
  }
  const reloadWhenDone = part.dataset.liveReload === 'true';

  async function tick() {
    try {
      const response = await fetch(part.dataset.live, { credentials: 'same-origin' });
      if (response.ok) {
        const template = document.createElement('template');
        template.innerHTML = (await response.text()).trim();
        const fresh = template.content.firstElementChild;
        if (fresh) {
          localTimes(fresh);
          if (fresh.outerHTML !== part.outerHTML) {
            part.replaceWith(fresh);
            part = fresh;
          }
        }
      }
    } catch (error) {
      // Offline for a moment: try again at the next tick.
    }
    if (part.dataset.liveDone !== 'true') {
      window.setTimeout(tick, 3000);
    } else if (reloadWhenDone) {
      window.location.reload();
    }
  }

  window.setTimeout(tick, 3000);
})();
