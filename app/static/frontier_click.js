() => {
  // Plotly has no click event in gradio: on page load, hook every plotly chart in #frontier-plot and
  // write the clicked point's run id (its customdata) into the hidden #frontier-click box.
  if (window.__studioFrontierHook) { return []; }
  window.__studioFrontierHook = true;
  const send = (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p || p.customdata === undefined || p.customdata === null) { return; }
    const id = Array.isArray(p.customdata) ? p.customdata[0] : p.customdata;
    const box = document.querySelector('#frontier-click textarea, #frontier-click input');
    if (!box) { return; }
    box.value = id + '@' + Date.now();
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const hook = () => {
    document.querySelectorAll('#frontier-plot .js-plotly-plot').forEach((gd) => {
      if (typeof gd.on !== 'function') { return; }
      if (typeof gd.removeListener === 'function') { gd.removeListener('plotly_click', send); }
      else if (gd.__studioHooked) { return; }
      gd.on('plotly_click', send);
      gd.__studioHooked = true;
    });
  };
  new MutationObserver(hook).observe(document.body, {childList: true, subtree: true});
  hook();
  return [];
}
