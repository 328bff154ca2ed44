// Three planes at once: beside the slice being painted, the slices along the other two
// axes through one point, the crosshair, which all three views mark. The point moves
// along the painted view's axis with its slice, and within its slice on Ctrl+click (or
// Alt+click). A click on a side view paints on that plane: it becomes the main view, at
// the crosshair. Under the pointer the main view reads out the voxel's coordinates and
// value. Side views are plain images (no Plotly): stepping through the main view only
// moves their lines.
const crosshair = { point: null, told: "" };  // point: {scan, z, y, x}; told: the point as Dash last learnt it
const SIDE_VIEW_IDS = ["side-view-1", "side-view-2"];
const SIDE_IMAGE_SIZE = 384;
const SIDE_VIEW_HEIGHT = "36vh";  // the tallest a side view gets: a tall plane is narrowed to fit  // the longest side the side views' slice images are asked at

// The crosshair for the view drawn: kept within a scan, at its centre for a new one, on `index` along `axis`.
function crosshairAt(defaults, axis, index) {
  if (!crosshair.point || crosshair.point.scan !== defaults.scan) {
    const [depth, height, width] = defaults.shape;
    crosshair.point = { scan: defaults.scan, z: Math.floor(depth / 2), y: Math.floor(height / 2), x: Math.floor(width / 2) };
  }
  crosshair.point[axis] = index;
  return crosshair.point;
}

// Two lines through the point, across the main view, as Plotly traces above the images.
function crosshairTraces(point, axis, width, height) {
  const [rowAxis, columnAxis] = planeAxes(axis);
  const row = point[rowAxis] + 0.5, column = point[columnAxis] + 0.5;
  const line = { color: CROSSHAIR_COLOUR, width: 1, dash: "dot" };
  return [
    { x: [column, column], y: [0, height], mode: "lines", line: line, hoverinfo: "skip", name: `${columnAxis} = ${point[columnAxis]}` },
    { x: [0, width], y: [row, row], mode: "lines", line: line, hoverinfo: "skip", name: `${rowAxis} = ${point[rowAxis]}` },
  ];
}
const CROSSHAIR_COLOUR = "rgba(255, 208, 0, 0.8)";

// The side views for the main view's inputs: the other two axes, each through the crosshair.
function drawSideViews(inputs) {
  const container = document.getElementById("side-views");
  if (!container) {
    return;
  }
  const shown = Boolean(inputs && inputs[0] && (inputs[15] || []).includes("planes"));
  if (container.hidden !== !shown) {
    container.hidden = !shown;
  }
  if (!shown) {
    return;
  }
  const [defaults, axis, , contrast] = inputs;
  const point = crosshair.point;
  planeAxes(axis).forEach((sideAxis, position) => {
    const pane = sidePane(SIDE_VIEW_IDS[position]);
    if (!pane) {
      return;
    }
    const index = point[sideAxis];
    const [rows, columns] = planeShape(defaults.shape, sideAxis);
    const [rowAxis, columnAxis] = planeAxes(sideAxis);
    const [low, high] = contrast;
    const size = Math.min(SIDE_IMAGE_SIZE, Math.max(rows, columns));
    if (pane.dataset.axis !== sideAxis) {
      pane.dataset.axis = sideAxis;
    }
    setStyle(pane.frame, "aspectRatio", `${columns} / ${rows}`);
    setStyle(pane.frame, "width", `min(100%, calc(${SIDE_VIEW_HEIGHT} * ${columns / rows}))`);
    setSource(pane.slice, `/slices/${encodeURIComponent(defaults.scan)}/${sideAxis}/${index}.jpeg?low=${low}&high=${high}&max_size=${size}`);
    setSource(pane.result, resultSource(inputs, sideAxis, index));
    setStyle(pane.result, "opacity", String(inputs[12]));
    setSource(pane.labels, labelsSource(inputs, sideAxis, index));
    setStyle(pane.labels, "opacity", String(inputs[9]));
    setStyle(pane.row, "top", `${100 * (point[rowAxis] + 0.5) / rows}%`);
    setStyle(pane.column, "left", `${100 * (point[columnAxis] + 0.5) / columns}%`);
    if (pane.caption.textContent !== `${sideAxis} = ${index}  ·  click to paint here`) {
      pane.caption.textContent = `${sideAxis} = ${index}  ·  click to paint here`;
      pane.title = `Paint on ${sideAxis} = ${index}`;
    }
  });
}

// The elements of a side view, made inside its empty container on first use.
function sidePane(id) {
  const pane = document.getElementById(id);
  if (!pane) {
    return null;
  }
  if (!pane.frame) {
    pane.frame = Object.assign(document.createElement("div"), { className: "plane-frame" });
    for (const name of ["slice", "result", "labels"]) {
      pane[name] = Object.assign(document.createElement("img"), { className: `plane-${name}`, alt: "" });
      pane.frame.appendChild(pane[name]);
    }
    pane.row = Object.assign(document.createElement("div"), { className: "crosshair-row" });
    pane.column = Object.assign(document.createElement("div"), { className: "crosshair-column" });
    pane.caption = Object.assign(document.createElement("div"), { className: "plane-caption" });
    pane.frame.append(pane.row, pane.column);
    pane.append(pane.frame, pane.caption);
    pane.addEventListener("click", () => paintOn(pane.dataset.axis));
  }
  return pane;
}

// Each step through the main view redraws the side views: only what changed is written,
// so a step moves one line and costs the page no other style or layout work.
// (The values written are remembered: the browser reads some back in its own spelling.)
function setStyle(element, property, value) {
  element.written = element.written || {};
  if (element.written[property] !== value) {
    element.written[property] = value;
    element.style[property] = value;
  }
}

function setSource(image, source) {
  if (image.hidden !== !source) {
    image.hidden = !source;
  }
  if (source && image.getAttribute("src") !== source) {
    image.setAttribute("src", source);
  }
}

// The plane clicked becomes the main view, at the crosshair's position along its axis.
function paintOn(axis) {
  if (!axis || !crosshair.point) {
    return;
  }
  tellDash();
  globalThis.dash_clientside.set_props("axis", { value: axis });
}

// Dash learns the point whenever it learns the slice (see tellDash): a change of axis,
// by a side view or the axis buttons, opens the new axis at the crosshair.
function syncCrosshair() {
  const told = JSON.stringify(crosshair.point);
  if (crosshair.point && told !== crosshair.told) {
    crosshair.told = told;
    globalThis.dash_clientside.set_props("crosshair", { data: { ...crosshair.point } });
  }
}

// The voxel under a pointer event in the main view, as {z, y, x}, or null off the slice.
function voxelUnder(event) {
  const inputs = viewerState.inputs;
  const plot = document.querySelector("#slice-view .js-plotly-plot");
  if (!inputs || !inputs[0] || !plot || !plot._fullLayout || !plot._fullLayout.xaxis) {
    return null;
  }
  const [defaults, axis] = inputs;
  const xAxis = plot._fullLayout.xaxis, yAxis = plot._fullLayout.yaxis;
  const box = plot.getBoundingClientRect();
  const column = Math.floor(xAxis.p2d(event.clientX - box.left - xAxis._offset));
  const row = Math.floor(yAxis.p2d(event.clientY - box.top - yAxis._offset));
  const [rows, columns] = planeShape(defaults.shape, axis);
  if (!(row >= 0 && row < rows && column >= 0 && column < columns)) {
    return null;
  }
  const [rowAxis, columnAxis] = planeAxes(axis);
  return { [axis]: viewerState.index, [rowAxis]: row, [columnAxis]: column };
}

// Ctrl+click (Alt+click, Cmd+click) moves the crosshair within the slice; it paints nothing.
window.addEventListener("pointerdown", function (event) {
  if (event.button !== 0 || !(event.ctrlKey || event.altKey || event.metaKey) || !event.target.closest("#slice-view")) {
    return;
  }
  const voxel = voxelUnder(event);
  if (!voxel) {
    return;
  }
  event.preventDefault();  // no mousedown follows: Plotly starts no stroke
  event.stopPropagation();
  Object.assign(crosshair.point, voxel);
  redrawNow();
  drawSideViews(viewerState.inputs);
  syncCrosshair();
}, true);

// The readout: the voxel's coordinates at once, its value once the pointer rests.
const VALUE_DELAY_MILLISECONDS = 60;
const readout = { timer: null, request: null, shown: "" };
document.addEventListener("pointermove", function (event) {
  const text = document.getElementById("cursor-readout");
  if (!text) {
    return;
  }
  const voxel = event.target.closest && event.target.closest("#slice-view") ? voxelUnder(event) : null;
  const where = voxel ? `z ${voxel.z} · y ${voxel.y} · x ${voxel.x}` : "";
  if (where === readout.shown) {
    return;
  }
  readout.shown = where;
  text.textContent = where;
  clearTimeout(readout.timer);
  if (readout.request) {
    readout.request.abort();
    readout.request = null;
  }
  if (voxel) {
    readout.timer = setTimeout(() => showValue(text, voxel, where), VALUE_DELAY_MILLISECONDS);
  }
}, { passive: true });

function showValue(text, voxel, where) {
  const scan = encodeURIComponent(viewerState.inputs[0].scan);
  readout.request = new AbortController();
  fetch(`/scans/${scan}/voxels/${voxel.z}/${voxel.y}/${voxel.x}`, { signal: readout.request.signal })
    .then((response) => response.ok ? response.json() : null)
    .then((body) => {
      if (body && readout.shown === where) {
        text.textContent = `${where} = ${body.value === null ? "not a number" : Number(body.value.toPrecision(6))}`;
      }
    })
    .catch(() => {});  // aborted by a newer position, or the server went away: the coordinates stay
}
