// Builds the slice figure in the browser around an image URL, and moves through slices with keys.
const viewerState = { index: null, last: 0, view: null, frame: null };  // the slice, view and figure (less image URLs), as last drawn

window.dash_clientside = Object.assign({}, window.dash_clientside, {
  mlexTomo: {
    sliceFigure: function (defaults, axis, index, window, tool, brushSize, activeClass, annotations, maskPath,
                           labelOpacity, visibleClasses, result, resultOpacity, resultClasses, viewport, sliceLoaded) {
      if (!defaults) {
        return [{ data: [], layout: { xaxis: { visible: false }, yaxis: { visible: false } } }, ""];
      }
      const axes = ["z", "y", "x"];
      const shape = defaults.shape.filter((_, position) => position !== axes.indexOf(axis));
      const [height, width] = shape;
      const [low, high] = window;
      const scan = encodeURIComponent(defaults.scan);
      const graph = document.getElementById("slice-view");
      const [xRange, yRange] = currentView(`${defaults.scan}/${axis}`, width, height);
      const maxSize = imageSize(graph, width, height, xRange, yRange);
      const layer = (source, name, opacity) => ({
        source: source, name: name, xref: "x", yref: "y", x: 0, y: 0, sizex: width, sizey: height,
        sizing: "stretch", layer: name === "slice" ? "below" : "above", opacity: opacity,
      });
      const sliceUrl = (size) => `/slices/${scan}/${axis}/${index}.jpeg?low=${low}&high=${high}&max_size=${size}`;
      // Overlays follow the slice on screen, which may still be an earlier one (see sliceSource).
      const [source, drawn] = sliceSource(sliceUrl(maxSize), sliceUrl(Math.max(256, Math.ceil(maxSize / 4))), index, `${defaults.scan}/${axis}`);
      const images = [layer(source, "slice", 1)];
      if (result && result.scan === defaults.scan && axis === "z") {
        const hidden = result.classes.filter((label) => !(resultClasses || []).includes(label));
        if (hidden.length < result.classes.length) {
          const job = encodeURIComponent(result.job_id);
          images.push(layer(`/results/${scan}/${job}/${drawn}.png?status=${result.status}${hiddenQuery(hidden)}`, "result", resultOpacity));
        }
      }
      if (maskPath && axis === "z" && annotations) {
        const ids = Object.keys(annotations.classes).map(Number).sort((a, b) => a - b);
        const hidden = ids.flatMap((id, position) => (visibleClasses || []).includes(id) ? [] : [position]);
        if (hidden.length < ids.length) {
          const maskId = maskPath.split("/")[2];
          images.push(layer(`/masks/${scan}/${maskId}/${drawn}.png${hiddenQuery(hidden).replace("&", "?")}`, "labels", labelOpacity));
        }
      }
      const classInfo = annotations && annotations.classes[String(activeClass)];
      const colour = tool === "eraser" ? "#ffffff" : (classInfo ? classInfo.color : "#ffffff");
      const pixelsPerVoxel = graph ? graph.clientWidth / Math.max(width, 1) : 1;
      const dragmode = { brush: "drawopenpath", eraser: "drawopenpath", polygon: "drawclosedpath", rectangle: "drawrect" }[tool] || "pan";
      const figure = {
        data: [{ x: [0, width], y: [0, height], mode: "markers", marker: { opacity: 0 }, hoverinfo: "none" }],
        layout: {
          images: images,
          xaxis: { range: xRange, visible: false, constrain: "domain" },
          yaxis: { range: yRange, visible: false, scaleanchor: "x" },
          margin: { l: 0, r: 0, t: 0, b: 0 }, plot_bgcolor: "#111", paper_bgcolor: "#111",
          dragmode: dragmode, uirevision: `${defaults.scan}/${axis}`, shapes: [],
          newshape: {
            line: { color: colour, width: Math.max(1, (tool === "brush" || tool === "eraser") ? brushSize * pixelsPerVoxel : 1) },
            fillcolor: tool === "polygon" || tool === "rectangle" ? colour : "rgba(0,0,0,0)", opacity: 0.6,
          },
        },
      };
      const last = defaults.shape[axes.indexOf(axis)] - 1;
      viewerState.index = index;
      viewerState.last = last;
      const label = `${axis} = ${index} / ${last}`;
      // A change of slice or window changes only the images' URLs: they are swapped in the
      // figure as drawn, which costs no Plotly redraw (half the time of a step through the
      // slices in software-rendered Chromium). While a dragged slider waits for its slice,
      // nothing changes at all.
      const frame = JSON.stringify({ ...figure, layout: { ...figure.layout, images: images.map(({ source, ...rest }) => rest) } });
      if (frame === viewerState.frame && swapImageSources(images.map((image) => image.source))) {
        return [globalThis.dash_clientside.no_update, label];
      }
      viewerState.frame = frame;
      return [figure, label];
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

    // A finished shape becomes a stroke now, with the tool and class chosen now: the
    // server may still be saving the previous one (see dash_app/panels/annotate.py).
    captureStroke: function (relayout, pending, applied, tool, activeClass, brushSize, index, axis, defaults) {
      const shapes = relayout && relayout.shapes;
      if (!shapes || !shapes.length || !defaults) {
        return window.dash_clientside.no_update;
      }
      if (axis !== "z") {
        window.dash_clientside.set_props("annotation-status", { children: "Labels are painted on z slices." });
        return window.dash_clientside.no_update;
      }
      const stroke = strokeFromShape(shapes[shapes.length - 1], tool, activeClass, brushSize);
      if (!stroke) {
        return window.dash_clientside.no_update;
      }
      const waiting = (pending || []).filter((entry) => entry.seq > (applied || 0));
      const seq = Math.max(applied || 0, ...waiting.map((entry) => entry.seq)) + 1;
      return [...waiting, { seq: seq, scan: defaults.scan, z: index, stroke: stroke }];
    },
  },
});

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
// figure is redrawn (the `slice-loaded` store) with the newest slice wanted. While the
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
  sliceLoads.behind = sliceLoads.wanted.index !== sliceLoads.shown.index;
  if (sliceLoads.wanted.source !== sliceLoads.shown.source) {
    globalThis.dash_clientside.set_props("slice-loaded", { data: sliceLoads.wanted.source });
  }
}
document.addEventListener("load", sliceImageDone, true);
document.addEventListener("error", sliceImageDone, true);

// The part of the slice on screen: the whole slice for a new scan or axis, otherwise
// where the user zoomed and panned to. Carried into every redrawn figure explicitly,
// because Plotly's uirevision did not keep a zoom across redraws of this figure.
function currentView(view, width, height) {
  const plot = document.querySelector("#slice-view .js-plotly-plot");
  const zoomed = viewerState.view === view && plot && plot.layout && plot.layout.xaxis && plot.layout.xaxis.range;
  viewerState.view = view;
  if (!zoomed) {
    return [[0, width], [height, 0]];
  }
  return [plot.layout.xaxis.range.slice(), plot.layout.yaxis.range.slice()];
}

// The image resolution the view needs. The server takes every n-th pixel, so the images
// it can send are the slice's size divided by a whole number; this asks for the coarsest
// one still as fine as the screen's pixels across the visible part of the slice. (The
// next power of two, asked before, sent a 660-pixel view images of 1024 pixels: 2.4 times
// the pixels to encode, send and decode.)
const LARGEST_IMAGE = 8192;
function imageSize(graph, width, height, xRange, yRange) {
  const screen = graph && graph.clientWidth ? Math.max(graph.clientWidth, graph.clientHeight) * (window.devicePixelRatio || 1) : 1024;
  const visible = Math.max(Math.abs(xRange[1] - xRange[0]) / width, Math.abs(yRange[1] - yRange[0]) / height, 1e-3);
  const longest = Math.max(width, height, 1);
  const needed = Math.min(longest, screen / Math.min(visible, 1));
  const stride = Math.max(1, Math.floor(longest / needed), Math.ceil(longest / LARGEST_IMAGE));
  return Math.max(16, Math.ceil(longest / stride));
}

// Keys belong to a text field being typed in; a radio button or checkbox leaves them to the viewer.
function typingIn(element) {
  const choices = ["radio", "checkbox", "button", "range"];
  return element.tagName === "TEXTAREA" || (element.tagName === "INPUT" && !choices.includes(element.type));
}

// Arrow keys step one slice, PageUp/PageDown ten, unless the user is typing in a field.
document.addEventListener("keydown", function (event) {
  const steps = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: 10, PageDown: -10 };
  if (!(event.key in steps) || typingIn(event.target)) {
    return;
  }
  if (viewerState.index === null || !window.dash_clientside.set_props) {
    return;
  }
  const next = Math.min(viewerState.last, Math.max(0, viewerState.index + steps[event.key]));
  viewerState.index = next;  // a key held down steps on before the figure is redrawn
  window.dash_clientside.set_props("slice-index", { value: next });
  event.preventDefault();
});

// [ and ] change the brush size; 1-9 choose a class (the n-th in the list).
document.addEventListener("keydown", function (event) {
  if (typingIn(event.target) || !window.dash_clientside.set_props) {
    return;
  }
  if (event.key === "[" || event.key === "]") {
    const handle = document.querySelector("#brush-size [role=slider]");
    const current = Number(handle ? handle.getAttribute("aria-valuenow") : 5);
    const next = Math.min(60, Math.max(1, current + (event.key === "]" ? 1 : -1)));
    window.dash_clientside.set_props("brush-size", { value: next });
    event.preventDefault();
  } else if (/^[1-9]$/.test(event.key)) {
    const choices = document.querySelectorAll("#active-class input[type=radio]");
    const choice = choices[Number(event.key) - 1];
    if (choice) {
      window.dash_clientside.set_props("active-class", { value: Number(choice.value) });
      event.preventDefault();
    }
  }
});
