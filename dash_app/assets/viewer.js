// Builds the slice figure in the browser around an image URL, and moves through slices with keys.
const viewerState = { index: null, last: 0 };  // the slice shown, as the figure was last drawn

window.dash_clientside = Object.assign({}, window.dash_clientside, {
  mlexTomo: {
    sliceFigure: function (defaults, axis, index, window) {
      if (!defaults) {
        return [{ data: [], layout: { xaxis: { visible: false }, yaxis: { visible: false } } }, ""];
      }
      const axes = ["z", "y", "x"];
      const shape = defaults.shape.filter((_, position) => position !== axes.indexOf(axis));
      const [height, width] = shape;
      const [low, high] = window;
      const url = `/slices/${encodeURIComponent(defaults.scan)}/${axis}/${index}.jpeg` +
        `?low=${low}&high=${high}&max_size=1024`;
      const figure = {
        data: [{ x: [0, width], y: [0, height], mode: "markers", marker: { opacity: 0 }, hoverinfo: "none" }],
        layout: {
          images: [{ source: url, xref: "x", yref: "y", x: 0, y: 0, sizex: width, sizey: height,
                     sizing: "stretch", layer: "below" }],
          xaxis: { range: [0, width], visible: false, constrain: "domain" },
          yaxis: { range: [height, 0], visible: false, scaleanchor: "x" },
          margin: { l: 0, r: 0, t: 0, b: 0 }, plot_bgcolor: "#111", paper_bgcolor: "#111",
          dragmode: "pan", uirevision: `${defaults.scan}/${axis}`,
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
