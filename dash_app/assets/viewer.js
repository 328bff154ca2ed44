// Builds the slice figure in the browser around an image URL, and moves through slices with
// the slider and keys without waiting for Dash (see showSlice).
const viewerState = { index: null, last: 0, view: null, frame: null, inputs: null, ranges: null };  // the slice, view, figure (less image URLs), callback inputs and visible ranges, as last drawn

window.dash_clientside = Object.assign({}, window.dash_clientside, {
  mlexTomo: {
    sliceFigure: function (...inputs) {
      const [defaults, axis, index] = inputs;
      if (!defaults) {
        viewerState.inputs = null;
        drawSideViews(null);
        drawUncertaintyStrip();
        return [emptyFigure("Pick a scan in the Scans list to start."), ""];
      }
      inputs[2] = currentIndex(`${defaults.scan}/${axis}`, index);
      const drawing = sliceDrawing(inputs);
      viewerState.inputs = inputs;
      drawUncertaintyStrip();  // assets/preview.js
      showOnSlider(drawing);
      drawSideViews(inputs);
      rememberView();
      // A change of slice or window changes only the images' URLs: they are swapped in the
      // figure as drawn, which costs no Plotly redraw (half the time of a step through the
      // slices in software-rendered Chromium). While a dragged slider waits for its slice,
      // nothing changes at all.
      if (drawnInPlace(drawing)) {
        return [globalThis.dash_clientside.no_update, drawing.label];
      }
      viewerState.frame = drawing.frame;
      return [drawing.figure, drawing.label];
    },

    // The histogram's markers follow the window's handles as they move.
    windowMarkers: function (contrast, figure) {
      if (!figure || !contrast || !figure.layout || !(figure.layout.shapes || []).length) {
        return window.dash_clientside.no_update;
      }
      const shapes = figure.layout.shapes.map((shape, position) => ({ ...shape, x0: contrast[position], x1: contrast[position] }));
      return { ...figure, layout: { ...figure.layout, shapes: shapes } };
    },

    // Zooming and panning report the visible part of the slice, which sets the image resolution.
    visiblePart: function (relayout, defaults, axis) {
      if (!relayout || !defaults) {
        return window.dash_clientside.no_update;
      }
      if ("xaxis.autorange" in relayout) {
        return null;
      }
      const graph = document.querySelector("#slice-view .js-plotly-plot");
      if (!("xaxis.range[0]" in relayout || "xaxis.range" in relayout) || !graph) {
        return window.dash_clientside.no_update;
      }
      const x = graph.layout.xaxis.range, y = graph.layout.yaxis.range;
      return { scan: defaults.scan, axis: axis, width: Math.abs(x[1] - x[0]), height: Math.abs(y[1] - y[0]) };
    },

    // A finished shape becomes a stroke now, with the tool and class chosen when it began
    // (strokeBegan): the server may still be saving the previous one (dash_app/panels/annotate.py).
    captureStroke: function (relayout, pending, applied, tool, activeClass, brushSize, index, axis, defaults) {
      const shapes = relayout && relayout.shapes;
      if (!shapes || !shapes.length || !defaults) {
        return window.dash_clientside.no_update;
      }
      const say = (text) => window.dash_clientside.set_props("annotation-status", { children: text });
      // The stroke belongs to the slice the user sees, which may not yet be the one asked for.
      const onScreen = sliceOnScreen(`${defaults.scan}/${axis}`);
      if (onScreen === null) {
        say("The slice is still loading: paint again once it shows.");
        redrawNow();  // drops the refused shape; Plotly's redraw for it showed the figure Dash last sent
        return window.dash_clientside.no_update;
      }
      const began = strokeBegan || { classId: activeClass, tool: tool };
      strokeBegan = null;
      const stroke = strokeFromShape(shapes[shapes.length - 1], began.tool, began.classId, brushSize);
      if (!stroke) {
        return window.dash_clientside.no_update;
      }
      const waiting = (pending || []).filter((entry) => entry.seq > (applied || 0));
      const seq = Math.max(applied || 0, ...waiting.map((entry) => entry.seq)) + 1;
      say("Saving…");
      return [...waiting, { seq: seq, scan: defaults.scan, axis: axis, index: onScreen, stroke: stroke }];
    },
  },
});

// The figure for the viewer's callback inputs (sliceFigure's), with what is needed to draw
// it in place: its images' URLs, the figure without them, the label under the slider.
function sliceDrawing(inputs) {
  const [defaults, axis, index, contrast, tool, brushSize, activeClass, annotations, , labelOpacity, , , resultOpacity, , , shownLayers] = inputs;
  const view = `${defaults.scan}/${axis}`;
  const [height, width] = planeShape(defaults.shape, axis);
  const [low, high] = contrast;
  const scan = encodeURIComponent(defaults.scan);
  const graph = document.getElementById("slice-view");
  const [xRange, yRange] = currentView(view, width, height);
  viewerState.ranges = [xRange, yRange];
  const maxSize = imageSize(graph, width, height, xRange, yRange);
  // Plotly keys the images of a layer by their position and size, and draws only one of
  // those that share a key: the layers differ by a millionth of a pixel each, or the labels
  // vanished whenever a result was shown. All are drawn below the traces, in order, so
  // the crosshair stays on top.
  const LAYER_NUDGE = { slice: 0, result: 1e-6, preview: 1.5e-6, labels: 2e-6 };
  const layer = (source, name, opacity) => ({
    source: source, name: name, xref: "x", yref: "y", x: LAYER_NUDGE[name], y: 0, sizex: width, sizey: height,
    sizing: "stretch", layer: "below", opacity: opacity,
  });
  const sliceUrl = (size) => `/slices/${scan}/${axis}/${index}.jpeg?low=${low}&high=${high}&max_size=${size}`;
  // Overlays follow the slice on screen, which may still be an earlier one (see sliceSource).
  const [source, drawn] = sliceSource(sliceUrl(maxSize), sliceUrl(Math.max(256, Math.ceil(maxSize / 4))), index, view);
  const images = [layer(source, "slice", 1)];
  // Painted labels go above the result and the preview, so they stay visible over a prediction.
  const result = resultSource(inputs, axis, drawn);
  if (result) {
    images.push(layer(result, "result", resultOpacity));
  }
  const preview = previewSource(inputs, axis, drawn);  // assets/preview.js
  if (preview) {
    images.push(layer(preview, "preview", resultOpacity));
  }
  const labels = labelsSource(inputs, axis, drawn);
  if (labels) {
    images.push(layer(labels, "labels", labelOpacity));
  }
  const classInfo = annotations && annotations.classes[String(activeClass)];
  const colour = tool === "eraser" ? "#ffffff" : (classInfo ? classInfo.color : "#ffffff");
  const pixelsPerVoxel = screenPixelsPerVoxel(graph, xRange, yRange);
  showBrushCursor(tool, brushSize * pixelsPerVoxel, colour);
  const dragmode = { brush: "drawopenpath", eraser: "drawopenpath", polygon: "drawclosedpath", rectangle: "drawrect" }[tool] || "pan";
  const point = crosshairAt(defaults, axis, index);
  const figure = {
    data: [
      { x: [0, width], y: [0, height], mode: "markers", marker: { opacity: 0 }, hoverinfo: "none" },
      ...((shownLayers || []).includes("planes") ? crosshairTraces(point, axis, width, height) : []),
    ],
    layout: {
      images: images,
      xaxis: { range: xRange, visible: false, constrain: "domain" },
      yaxis: { range: yRange, visible: false, scaleanchor: "x" },
      margin: { l: 0, r: 0, t: 0, b: 0 }, plot_bgcolor: VIEWER_BACKGROUND, paper_bgcolor: VIEWER_BACKGROUND,
      dragmode: dragmode, uirevision: view, shapes: [], showlegend: false,
      newshape: {
        line: { color: colour, width: Math.max(1, (tool === "brush" || tool === "eraser") ? brushSize * pixelsPerVoxel : 1) },
        fillcolor: tool === "polygon" || tool === "rectangle" ? colour : "rgba(0,0,0,0)", opacity: 0.6,
      },
    },
  };
  const last = defaults.shape[AXES.indexOf(axis)] - 1;
  return {
    figure: figure, view: view, index: index, last: last, label: `${axis} = ${index} / ${last}`,
    sources: images.map((image) => image.source),
    frame: JSON.stringify({ ...figure, layout: { ...figure.layout, images: images.map(({ source, ...rest }) => rest) } }),
  };
}

const AXES = ["z", "y", "x"];

// (rows, columns) of a slice along `axis`: (y, x) on z, (z, x) on y, (z, y) on x.
function planeShape(shape, axis) {
  return shape.filter((_, position) => position !== AXES.indexOf(axis));
}

// The axes along a slice's rows and its columns.
function planeAxes(axis) {
  return AXES.filter((other) => other !== axis);
}

// The shown job's labels on a slice along any axis, or null when none are shown there.
function resultSource(inputs, axis, index) {
  const [defaults, , , , , , , , , , , result, , resultClasses, , shownLayers] = inputs;
  if (!result || result.scan !== defaults.scan || !(shownLayers || []).includes("result")) {
    return null;
  }
  const hidden = result.classes.filter((label) => !(resultClasses || []).includes(label));
  if (hidden.length === result.classes.length) {
    return null;
  }
  const scan = encodeURIComponent(defaults.scan), job = encodeURIComponent(result.job_id);
  return `/results/${scan}/${job}/${axis}/${index}.png?status=${result.status}${hiddenQuery(hidden)}`;
}

// The painted labels on a slice along any axis (strokes on crossing slices included), or null.
function labelsSource(inputs, axis, index) {
  const [defaults, , , , , , , annotations, maskPath, , visibleClasses, , , , , shownLayers] = inputs;
  if (!maskPath || !annotations || !(shownLayers || []).includes("labels")) {
    return null;
  }
  const ids = Object.keys(annotations.classes).map(Number).sort((a, b) => a - b);
  const hidden = ids.flatMap((id, position) => (visibleClasses || []).includes(id) ? [] : [position]);
  if (hidden.length === ids.length) {
    return null;
  }
  const maskId = maskPath.split("/")[2];
  return `/masks/${encodeURIComponent(defaults.scan)}/${maskId}/${axis}/${index}.png${hiddenQuery(hidden).replace("&", "?")}`;
}

// A step through the slices (slider, keys, a slice that finished loading) is drawn here, at
// once: Dash dispatches about 20 store actions over every component of the page for each
// change of a prop, 12-17 ms of script per step that left scrubbing short of 20 slices a
// second. Dash learns the slice (the `slice-index` store) once the user rests on it, or
// before anything else the user does; a step the figure cannot take in place (shapes being
// drawn, a resized view) goes through Dash at once.
const SLICE_SYNC_MILLISECONDS = 250;
const sliceSync = { pending: null, timer: null };

function showSlice(index) {
  if (!viewerState.inputs) {
    return;
  }
  const inputs = [...viewerState.inputs];
  inputs[2] = Math.min(viewerState.last, Math.max(0, index));
  const drawing = sliceDrawing(inputs);
  viewerState.inputs = inputs;
  showOnSlider(drawing);
  drawSideViews(inputs);
  clearTimeout(sliceSync.timer);
  sliceSync.pending = { view: drawing.view, index: drawing.index };
  if (drawnInPlace(drawing)) {
    showLabel(drawing.label);
    sliceSync.timer = setTimeout(tellDash, SLICE_SYNC_MILLISECONDS);
  } else {
    tellDash();
  }
}

// The figure as it should be now, drawn at once: Dash's copy of the figure has the image
// URLs it last sent, not the ones swapped in place since.
function redrawNow() {
  if (!viewerState.inputs) {
    return;
  }
  const drawing = sliceDrawing(viewerState.inputs);
  viewerState.frame = drawing.frame;
  globalThis.dash_clientside.set_props("slice-view", { figure: drawing.figure });
}

// A layer's image arrived (the preview): swapped in where the figure allows, else redrawn.
function refreshImages() {
  if (!viewerState.inputs) {
    return;
  }
  if (!drawnInPlace(sliceDrawing(viewerState.inputs))) {
    redrawNow();
  }
}

function drawnInPlace(drawing) {
  return drawing.frame === viewerState.frame && swapImageSources(drawing.sources);
}

function tellDash() {
  clearTimeout(sliceSync.timer);
  const pending = sliceSync.pending;
  sliceSync.pending = null;
  if (pending) {
    globalThis.dash_clientside.set_props("slice-index", { data: pending.index });
  }
  syncCrosshair();
  rememberView();
}

// The slice to draw: the one Dash sends, unless the user has since stepped on in the same view.
function currentIndex(view, index) {
  const context = globalThis.dash_clientside.callback_context;
  const fromDash = context && context.triggered.some((trigger) => trigger.prop_id === "slice-index.data");
  if (sliceSync.pending && sliceSync.pending.view === view && !fromDash) {
    return sliceSync.pending.index;
  }
  clearTimeout(sliceSync.timer);
  sliceSync.pending = null;
  return index;
}

function showOnSlider(drawing) {
  viewerState.index = drawing.index;
  viewerState.last = drawing.last;
  const slider = sliceSlider();
  if (slider) {
    slider.max = String(drawing.last);
    slider.value = String(drawing.index);
  }
}

// Written into the text React rendered, so that React's next render of the label finds its own node.
function showLabel(label) {
  const text = document.getElementById("slice-label");
  if (text && text.firstChild && text.firstChild.nodeType === Node.TEXT_NODE) {
    text.firstChild.nodeValue = label;
  }
}

// The slice slider is a plain range input owned by this script (Dash's own slider reports
// every step through the store), made inside its empty container on first use.
function sliceSlider() {
  const container = document.getElementById("slice-slider");
  if (!container) {
    return null;
  }
  let slider = container.querySelector("input[type=range]");
  if (!slider) {
    slider = document.createElement("input");
    Object.assign(slider, { type: "range", min: "0", max: "0", step: "1", value: "0" });
    slider.setAttribute("aria-label", "Slice");
    container.appendChild(slider);
  }
  return slider;
}

document.addEventListener("input", function (event) {
  if (event.target.closest && event.target.closest("#slice-slider")) {
    showSlice(Number(event.target.value));
  }
});

// A stroke is painted with the class and tool chosen when it began: a key pressed as the
// mouse is released changes the choice before the stroke's callback reads it.
let strokeBegan = null;
document.addEventListener("pointerdown", function (event) {
  if (event.target.closest && event.target.closest("#slice-view")) {
    const chosen = (id) => document.querySelector(`#${id} input:checked`);
    const activeClass = chosen("active-class");
    const tool = chosen("tool");
    strokeBegan = activeClass && tool ? { classId: Number(activeClass.value), tool: tool.value } : null;
  }
}, true);

// Whatever else the user does may run a callback that reads the slice: Dash learns it first.
document.addEventListener("pointerdown", function (event) {
  if (!(event.target.closest && event.target.closest("#slice-slider"))) {
    tellDash();
  }
}, true);

// A Plotly shape (in data coordinates, which are slice pixels) as a stroke of dash_app.annotations.
function strokeFromShape(shape, tool, classId, width) {
  if (shape.type === "rect") {
    return { tool: "rectangle", class_id: classId, points: [[shape.x0, shape.y0], [shape.x1, shape.y1]] };
  }
  const points = [...(shape.path || "").matchAll(/[ML]\s*(-?[\d.eE+-]+)\s*,\s*(-?[\d.eE+-]+)/g)]
    .map((match) => [Number(match[1]), Number(match[2])]);
  if (!points.length) {
    return null;
  }
  if (tool === "eraser") {
    return { tool: "eraser", points: points, width: width };
  }
  return { tool: tool === "polygon" ? "polygon" : "brush", class_id: classId, points: points, width: width };
}

// Point the figure's drawn images at new URLs as Plotly itself would: its `xlink:href`,
// the `_imgSrc` it compares before setting one, and both layouts (`layout`, from which a
// redraw starts, and `_fullLayout`, from which a zoom or pan redraws the images). False
// when Plotly must draw the figure: it lacks these images, or shows shapes the user drew
// (the new figure clears them).
const XLINK = "http://www.w3.org/1999/xlink";
function swapImageSources(sources) {
  const plot = document.querySelector("#slice-view .js-plotly-plot");
  const drawn = plot && plot.layout && plot.layout.images;
  if (!drawn || drawn.length !== sources.length || (plot.layout.shapes || []).length) {
    return false;
  }
  const full = (plot._fullLayout && plot._fullLayout.images) || [];
  const elements = [...plot.querySelectorAll("image")];
  const shown = drawn.map((image) => elements.find((element) => element._imgSrc === image.source));
  if (shown.some((element) => !element)) {
    return false;
  }
  sources.forEach((source, position) => {
    if (drawn[position].source !== source) {
      shown[position].setAttributeNS(XLINK, "xlink:href", source);
      shown[position]._imgSrc = source;
      drawn[position].source = source;
      full.filter((image) => image._index === position).forEach((image) => { image.source = source; });
    }
  });
  return true;
}

function hiddenQuery(hidden) {
  return hidden.length ? `&hidden=${hidden.join(",")}` : "";
}

// While a slider is dragged, every change would replace the image URL and Chromium would
// drop the load under way, painting nothing until the drag stops. So the figure keeps the
// URL it is loading until that image has loaded; then, if the user has moved on, the
// figure is redrawn with the newest slice wanted. While the
// user moves faster than slices load, they are loaded at a quarter of the resolution (a
// sixteenth of the bytes to read and send); the slice the user stops on is then loaded
// in full. A new scan or axis is shown at once; a load that never finishes is given up.
const sliceLoads = { view: null, shown: null, loading: null, wanted: null, behind: false, since: 0, preload: null };
const SLICE_LOAD_GIVE_UP_MILLISECONDS = 3000;

// The slice image to draw and its index: the one wanted, unless another is still loading.
function sliceSource(wanted, coarse, index, view) {
  if (view !== sliceLoads.view) {
    Object.assign(sliceLoads, { view: view, shown: null, loading: null, behind: false });
  }
  sliceLoads.wanted = { source: wanted, index: index };
  const stalled = performance.now() - sliceLoads.since > SLICE_LOAD_GIVE_UP_MILLISECONDS;
  if (sliceLoads.loading !== null && !stalled) {
    return [sliceLoads.loading.source, sliceLoads.loading.index];
  }
  const source = sliceLoads.behind && coarse !== wanted ? coarse : wanted;
  sliceLoads.loading = sliceLoads.shown && source === sliceLoads.shown.source ? null : { source: source, index: index };
  sliceLoads.since = performance.now();
  markLoading();
  if (sliceLoads.loading) {
    sliceLoads.preload = new Image();  // the request leaves now, not after Plotly's redraw
    sliceLoads.preload.src = source;
  }
  return [source, index];
}

function sliceImageDone(event) {
  const image = event.target;
  if (!(image instanceof SVGImageElement) || !sliceLoads.loading || image.href.baseVal !== sliceLoads.loading.source) {
    return;
  }
  sliceLoads.shown = sliceLoads.loading;
  sliceLoads.loading = null;
  markLoading();
  sliceLoads.behind = sliceLoads.wanted.index !== sliceLoads.shown.index;
  if (sliceLoads.wanted.source !== sliceLoads.shown.source && viewerState.inputs) {
    showSlice(viewerState.inputs[2]);
  }
}
document.addEventListener("load", sliceImageDone, true);
document.addEventListener("error", sliceImageDone, true);

// The part of the slice on screen: the whole slice for a new scan or axis, otherwise
// where the user zoomed and panned to. Carried into every redrawn figure explicitly,
// because Plotly's uirevision did not keep a zoom across redraws of this figure.
function currentView(view, width, height) {
  const plot = document.querySelector("#slice-view .js-plotly-plot");
  const firstDraw = viewerState.view !== view;
  const zoomed = !firstDraw && plot && plot.layout && plot.layout.xaxis && plot.layout.xaxis.range;
  viewerState.view = view;
  if (firstDraw) {
    return zoomFromAddress(view) || [[0, width], [height, 0]];  // a reload or a shared link keeps its zoom
  }
  if (!zoomed) {
    return [[0, width], [height, 0]];
  }
  return [plot.layout.xaxis.range.slice(), plot.layout.yaxis.range.slice()];
}

// The image resolution the view needs. The server takes every n-th pixel, so the images
// it can send are the slice's size divided by a whole number; this asks for the coarsest
// one still as fine as the screen's pixels across the visible part of the slice. (The
// next power of two, asked before, sent a 660-pixel view images of 1024 pixels: 2.4 times
// the pixels to encode, send and decode.) An image up to a tenth coarser than the screen
// counts as fine enough: without that slack, a view a few pixels taller than 683 asked
// a 2048² slice for 1024² images, twice the pixels, for no visible gain.
const LARGEST_IMAGE = 8192;
const SCREEN_SLACK = 0.9;
function imageSize(graph, width, height, xRange, yRange) {
  const screen = graph && graph.clientWidth ? Math.max(graph.clientWidth, graph.clientHeight) * (window.devicePixelRatio || 1) : 1024;
  const visible = Math.max(Math.abs(xRange[1] - xRange[0]) / width, Math.abs(yRange[1] - yRange[0]) / height, 1e-3);
  const longest = Math.max(width, height, 1);
  const needed = Math.min(longest, SCREEN_SLACK * screen / Math.min(visible, 1));
  const stride = Math.max(1, Math.floor(longest / needed), Math.ceil(longest / LARGEST_IMAGE));
  return Math.max(16, Math.ceil(longest / stride));
}


// The slice index whose image is on screen in this view, or null while another slice is
// loading (the label has moved on; the image has not). A sharper copy of the same slice
// loading over it does not count.
function sliceOnScreen(view) {
  const shown = sliceLoads.shown;
  if (sliceLoads.view !== view || !shown || (sliceLoads.loading !== null && sliceLoads.loading.index !== shown.index)) {
    return null;
  }
  return shown.index;
}

// A slice that takes more than a moment to load is marked as loading (a badge on the view).
const LOADING_MARK_MILLISECONDS = 150;
const loadingMark = { timer: null };
function markLoading() {
  const graph = document.getElementById("slice-view");
  clearTimeout(loadingMark.timer);
  if (!graph) {
    return;
  }
  if (sliceLoads.loading === null) {
    graph.classList.remove("loading");
  } else {
    loadingMark.timer = setTimeout(() => graph.classList.toggle("loading", sliceLoads.loading !== null), LOADING_MARK_MILLISECONDS);
  }
}

const VIEWER_BACKGROUND = "#111";
function emptyFigure(message) {
  return {
    data: [],
    layout: {
      xaxis: { visible: false }, yaxis: { visible: false }, plot_bgcolor: VIEWER_BACKGROUND, paper_bgcolor: VIEWER_BACKGROUND,
      margin: { l: 0, r: 0, t: 0, b: 0 },
      annotations: [{ text: message, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#bbb", size: 16 } }],
    },
  };
}

// Screen pixels per slice pixel in the visible part of the slice (the image keeps its aspect).
function screenPixelsPerVoxel(graph, xRange, yRange) {
  if (!graph || !graph.clientWidth) {
    return 1;
  }
  return Math.min(graph.clientWidth / Math.abs(xRange[1] - xRange[0]), graph.clientHeight / Math.abs(yRange[1] - yRange[0]));
}

// The brush and eraser show their footprint as the pointer: a circle of the brush's size on screen.
const LARGEST_CURSOR = 128;  // Chromium ignores larger cursor images
function showBrushCursor(tool, diameter, colour) {
  let style = document.getElementById("brush-cursor");
  if (!style) {
    style = document.createElement("style");
    style.id = "brush-cursor";
    document.head.appendChild(style);
  }
  if (tool !== "brush" && tool !== "eraser") {
    style.textContent = "";
    return;
  }
  const size = Math.max(4, Math.min(LARGEST_CURSOR, Math.round(diameter) + 2));
  const centre = size / 2;
  const svg = `<svg xmlns='http://www.w3.org/2000/svg' width='${size}' height='${size}'>`
    + `<circle cx='${centre}' cy='${centre}' r='${centre - 1}' fill='none' stroke='black' stroke-width='2'/>`
    + `<circle cx='${centre}' cy='${centre}' r='${centre - 1}' fill='none' stroke='${colour}' stroke-width='1'/></svg>`;
  const url = `data:image/svg+xml;utf8,${encodeURIComponent(svg)}`;
  style.textContent = `#slice-view .nsewdrag { cursor: url("${url}") ${Math.round(centre)} ${Math.round(centre)}, crosshair !important; }`;
}
