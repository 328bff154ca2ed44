// The view in the page's address: scan, axis, slice and zoom, so that a reload or a shared
// link returns to the same view (dash_app/address.py reads it when the page opens).
// Written when Dash learns the view (once the user rests on a slice, after a zoom or a
// new figure), not on every step: browsers throttle frequent history updates.
function rememberView() {
  const inputs = viewerState.inputs;
  if (!inputs || !inputs[0] || !viewerState.ranges) {
    return;
  }
  const [defaults, axis] = inputs;
  const [xRange, yRange] = viewerState.ranges;
  const address = new URLSearchParams({ scan: defaults.scan, axis: axis, slice: String(viewerState.index) });
  const [height, width] = defaults.shape.filter((_, position) => position !== ["z", "y", "x"].indexOf(axis));
  const whole = xRange[0] <= 0 && xRange[1] >= width && Math.max(...yRange) >= height && Math.min(...yRange) <= 0;
  if (!whole) {
    address.set("zoom", [...xRange, ...yRange].map((value) => value.toFixed(1)).join(","));
  }
  const wanted = `${location.pathname}?${address}`;
  if (wanted !== location.pathname + location.search) {
    history.replaceState(history.state, "", wanted);
  }
}

// The zoom the address holds for this view (`scan/axis`), as [xRange, yRange], or null.
function zoomFromAddress(view) {
  const address = new URLSearchParams(location.search);
  const values = (address.get("zoom") || "").split(",").map(Number);
  if (`${address.get("scan")}/${address.get("axis") || "z"}` !== view || values.length !== 4 || values.some(Number.isNaN)) {
    return null;
  }
  return [values.slice(0, 2), values.slice(2, 4)];
}
