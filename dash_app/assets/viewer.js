// Builds the slice figure in the browser around an image URL, and moves through slices with keys.
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
      return [figure, `${axis} = ${index} / ${defaults.shape[axes.indexOf(axis)] - 1}`];
    },
  },
});

// Arrow keys step one slice, PageUp/PageDown ten, unless the user is typing in a field.
document.addEventListener("keydown", function (event) {
  const steps = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: 10, PageDown: -10 };
  if (!(event.key in steps) || ["INPUT", "TEXTAREA"].includes(event.target.tagName)) {
    return;
  }
  const slider = document.getElementById("slice-index");
  if (!slider || !window.dash_clientside.set_props) {
    return;
  }
  const handle = slider.querySelector("[role=slider]");
  const maximum = Number(handle ? handle.getAttribute("aria-valuemax") : 0);
  const current = Number(handle ? handle.getAttribute("aria-valuenow") : 0);
  const next = Math.min(maximum, Math.max(0, current + steps[event.key]));
  window.dash_clientside.set_props("slice-index", { value: next });
  event.preventDefault();
});
