() => {
  // A sweep grid is HTML without gradio events: on page load, listen for clicks on its cells (one listener
  // on the document, so grids drawn later are covered too) and write the clicked cell's run id into the
  // hidden #grid-click box; the server answers with that run's images at full size in #grid-cell, which
  // is brought into view once it shows them.
  if (window.__studioGridHook) { return []; }
  window.__studioGridHook = true;
  document.addEventListener('click', (ev) => {
    const cell = ev.target.closest && ev.target.closest('#sweep-grid td[data-run-id]');
    const box = document.querySelector('#grid-click textarea, #grid-click input');
    if (!cell || !box) { return; }
    const token = cell.dataset.runId + '@' + Date.now();
    box.value = token;
    box.dispatchEvent(new Event('input', {bubbles: true}));
    const until = Date.now() + 30000;
    const reveal = () => {
      const view = document.querySelector('#grid-cell');
      const label = view && view.innerText.includes('Run ' + cell.dataset.runId + ':');
      if (label) { view.scrollIntoView({behavior: 'smooth', block: 'nearest'}); }
      else if (Date.now() < until) { setTimeout(reveal, 100); }
    };
    reveal();
  });
  return [];
}
