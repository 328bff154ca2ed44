// Builds the slice figure in the browser around an image URL, and moves through slices with keys.
const viewerState = { index: null, last: 0 };  // the slice shown, as the figure was last drawn

window.dash_clientside = Object.assign({}, window.dash_clientside, {
  mlexTomo: {
    sliceFigure: function (defaults, axis, index, window, tool, brushSize, activeClass, annotations, maskPath) {
      if (!defaults) {
        return [{ data: [], layout: { xaxis: { visible: false }, yaxis: { visible: false } } }, ""];
      }
      const axes = ["z", "y", "x"];
      const shape = defaults.shape.filter((_, position) => position !== axes.indexOf(axis));
      const [height, width] = shape;
      const [low, high] = window;
      const scan = encodeURIComponent(defaults.scan);
      const images = [{
        source: `/slices/${scan}/${axis}/${index}.jpeg?low=${low}&high=${high}&max_size=1024`,
        xref: "x", yref: "y", x: 0, y: 0, sizex: width, sizey: height, sizing: "stretch", layer: "below",
      }];
      if (maskPath && axis === "z") {
        const maskId = maskPath.split("/")[2];
        images.push({
          source: `/masks/${scan}/${maskId}/${index}.png`, name: "labels",
          xref: "x", yref: "y", x: 0, y: 0, sizex: width, sizey: height, sizing: "stretch", layer: "above", opacity: 0.5,
        });
      }
      const classInfo = annotations && annotations.classes[String(activeClass)];
      const colour = tool === "eraser" ? "#ffffff" : (classInfo ? classInfo.color : "#ffffff");
      const graph = document.getElementById("slice-view");
      const pixelsPerVoxel = graph ? graph.clientWidth / Math.max(width, 1) : 1;
      const dragmode = { brush: "drawopenpath", eraser: "drawopenpath", polygon: "drawclosedpath", rectangle: "drawrect" }[tool] || "pan";
      const figure = {
        data: [{ x: [0, width], y: [0, height], mode: "markers", marker: { opacity: 0 }, hoverinfo: "none" }],
        layout: {
          images: images,
          xaxis: { range: [0, width], visible: false, constrain: "domain" },
          yaxis: { range: [height, 0], visible: false, scaleanchor: "x" },
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
      return [figure, `${axis} = ${index} / ${last}`];
    },
  },
});

// Arrow keys step one slice, PageUp/PageDown ten, unless the user is typing in a field.
document.addEventListener("keydown", function (event) {
  const steps = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: 10, PageDown: -10 };
  if (!(event.key in steps) || ["INPUT", "TEXTAREA"].includes(event.target.tagName)) {
    return;
  }
  if (viewerState.index === null || !window.dash_clientside.set_props) {
    return;
  }
  const next = Math.min(viewerState.last, Math.max(0, viewerState.index + steps[event.key]));
  window.dash_clientside.set_props("slice-index", { value: next });
  event.preventDefault();
});

// [ and ] change the brush size; 1-9 choose a class (the n-th in the list).
document.addEventListener("keydown", function (event) {
  if (["INPUT", "TEXTAREA"].includes(event.target.tagName) || !window.dash_clientside.set_props) {
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
