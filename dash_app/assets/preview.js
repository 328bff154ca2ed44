// The live preview layer and "where to paint next".
//
// The preview of a slice is fetched by script, not by the figure: one request at a time,
// always for the newest saved mask, and the slice keeps showing the previous preview
// until the new one has arrived (a figure image pointed at a pending URL shows nothing).
// Painting never waits for it: strokes are saved by their own callback.
const PREVIEW_KEPT = 32;  // previews held as object URLs, the oldest let go
const BLANK_IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg==";  // one transparent pixel
const SURVEY_POLL_MILLISECONDS = 3000;
const SCORE_POLL_MILLISECONDS = 700;  // a forest is scored right after its first preview, in about the time that took
const previewState = {
  wanted: null, inFlight: null, images: new Map(), latestForPlane: new Map(),
  uncertainty: null, scores: new Map(), scoreTimer: null, statusShown: null, warmed: new Set(), lastJump: null,
};

// The preview image for a slice (a placeholder until one has arrived), or null when the preview is off.
function previewSource(inputs, axis, index) {
  const [defaults, , , , , , , , maskPath, , visibleClasses, , , , , shownLayers] = inputs;
  if (!(shownLayers || []).includes("preview")) {
    showPreviewStatus("");
    return null;
  }
  if (!maskPath) {
    warmPreview(defaults.scan, axis, index);
    showPreviewStatus("Preview: paint at least two classes to see one.");
    return BLANK_IMAGE;
  }
  const annotations = inputs[7];
  const ids = annotations ? Object.keys(annotations.classes).map(Number).sort((a, b) => a - b) : [];
  const hidden = ids.flatMap((id, position) => (visibleClasses || []).includes(id) ? [] : [position]);
  const maskId = maskPath.split("/")[2];
  const plane = `${defaults.scan}/${axis}/${index}${hiddenQuery(hidden)}`;
  const url = `/previews/${encodeURIComponent(defaults.scan)}/${maskId}/${axis}/${index}.png${hiddenQuery(hidden).replace("&", "?")}`;
  const known = previewState.images.get(url);
  if (known) {
    previewState.statusShown = url;
    showPreviewStatus(statusOf(known));
    if (known.source) {
      return known.source;
    }
  } else {
    requestPreview(url, plane, { scan: defaults.scan, maskId: maskId });
    showPreviewStatus("Preview: updating…", true);
  }
  const earlier = previewState.images.get(previewState.latestForPlane.get(plane));
  return earlier && earlier.source ? earlier.source : BLANK_IMAGE;
}

// Nothing painted yet: the server loads the model and this slice's features meanwhile, so the first stroke's preview is quick.
function warmPreview(scan, axis, index) {
  const plane = `${scan}/${axis}/${index}`;
  if (!previewState.warmed.has(plane)) {
    previewState.warmed.add(plane);
    fetch(`/previews/${encodeURIComponent(scan)}/${axis}/${index}/warm`, { method: "POST", credentials: "same-origin" }).catch(() => {});
  }
}

function requestPreview(url, plane, mask) {
  previewState.wanted = { url: url, plane: plane, mask: mask };
  if (previewState.inFlight) {
    return;  // fetched once the one under way is done, unless superseded again
  }
  previewState.inFlight = url;
  fetch(url, { credentials: "same-origin" })
    .then((response) => response.ok
      ? response.blob().then((blob) => ({ source: URL.createObjectURL(blob), facts: previewFacts(response.headers), maskId: mask.maskId }))
      : response.json().then((problem) => ({ source: null, status: `Preview: ${problem.error}` }), () => ({ source: null, status: `Preview failed (HTTP ${response.status}).` })))
    .catch((error) => ({ source: null, status: `Preview failed: ${error.message}` }))
    .then((result) => {
      keepPreview(url, plane, result);
      previewState.inFlight = null;
      const next = previewState.wanted;
      if (next && !previewState.images.has(next.url)) {
        requestPreview(next.url, next.plane, next.mask);
      }
      fetchUncertainty(mask);
      if (typeof refreshImages === "function") {
        refreshImages();
      }
    });
}

function keepPreview(url, plane, result) {
  previewState.images.set(url, result);
  if (result.source) {
    previewState.latestForPlane.set(plane, url);
  }
  while (previewState.images.size > PREVIEW_KEPT) {
    const [oldest, kept] = previewState.images.entries().next().value;
    if (kept.source && [...previewState.latestForPlane.values()].includes(oldest)) {
      break;  // still the newest preview of some slice: it stands in while that slice updates
    }
    previewState.images.delete(oldest);
    if (kept.source) {
      URL.revokeObjectURL(kept.source);
    }
  }
}

function previewFacts(headers) {
  return {
    pixels: Number(headers.get("X-Preview-Trained-Pixels")),
    stride: Number(headers.get("X-Preview-Stride")),
    uncertainty: Number(headers.get("X-Preview-Slice-Uncertainty")),
  };
}

// A preview's line: what its forest trained on, its held-out score once that has arrived, the slice's uncertainty.
function statusOf(result) {
  if (!result.facts) {
    return result.status;
  }
  const { pixels, stride, uncertainty } = result.facts;
  const resolution = stride > 1 ? ` at 1/${stride} resolution` : "";
  const scored = previewState.scores.get(result.maskId);
  const scoreText = !scored
    ? "scoring it on held-out painted pixels…"
    : (scored.held_out
      ? `mean IoU ${scored.held_out.mean_iou.toFixed(3)} on ${scored.held_out.pixels.toLocaleString()} held-out painted pixels`
      : "too few painted pixels to hold any out for a score");
  return `Preview: trained on ${pixels.toLocaleString()} painted pixels${resolution}; ${scoreText}; this slice's uncertainty ${uncertainty.toFixed(3)}.`;
}

function showPreviewStatus(text, pending) {
  const status = document.getElementById("preview-status");
  if (!status) {
    return;
  }
  if (pending && status.textContent) {
    status.classList.add("pending");  // the last figures stay readable while the next preview computes
    return;
  }
  status.classList.remove("pending");
  if (status.textContent !== text) {
    status.textContent = text;
  }
}

// What follows a forest's first preview: its held-out score, and its uncertainty along z as far as estimated.
function fetchUncertainty(mask) {
  const url = `/previews/${encodeURIComponent(mask.scan)}/${mask.maskId}/uncertainty`;
  fetch(url, { credentials: "same-origin" })
    .then((response) => response.ok ? response.json() : null)
    .then((estimate) => {
      if (!estimate) {
        return;
      }
      previewState.uncertainty = { scan: mask.scan, maskId: mask.maskId, slices: estimate.slices, values: estimate.mean_uncertainty };
      drawUncertaintyStrip();
      if (estimate.scored) {
        previewState.scores.set(mask.maskId, { held_out: estimate.held_out });
        const shown = previewState.images.get(previewState.statusShown);
        if (shown && shown.maskId === mask.maskId) {
          showPreviewStatus(statusOf(shown));
        }
      } else if (isCurrentMask(mask.maskId) && !previewState.scoreTimer) {  // a forest superseded before it was scored never is
        previewState.scoreTimer = setTimeout(() => { previewState.scoreTimer = null; fetchUncertainty(mask); }, SCORE_POLL_MILLISECONDS);
      }
    })
    .catch(() => {});
}

function isCurrentMask(maskId) {
  const inputs = typeof viewerState !== "undefined" ? viewerState.inputs : null;
  return Boolean(inputs && inputs[8] && inputs[8].split("/")[2] === maskId && (inputs[15] || []).includes("preview"));
}

// The survey of the volume goes on in the background after a stroke: follow it while the preview is shown.
setInterval(function () {
  const inputs = typeof viewerState !== "undefined" ? viewerState.inputs : null;
  const estimate = previewState.uncertainty;
  if (document.hidden || !inputs || !estimate || !(inputs[15] || []).includes("preview") || !inputs[8]) {
    return;
  }
  if (inputs[8].split("/")[2] === estimate.maskId && estimate.slices.length < Math.min(32, inputs[0].shape[0])) {
    fetchUncertainty({ scan: estimate.scan, maskId: estimate.maskId });
  }
}, SURVEY_POLL_MILLISECONDS);

// Where the model is unsure along z: the preview's estimate while the preview is shown,
// else the shown job's, measured on every slice it segmented.
function uncertaintyAlongZ(inputs) {
  const [defaults, , , , , , , , maskPath, , , result, , , , shownLayers] = inputs;
  const estimate = previewState.uncertainty;
  if ((shownLayers || []).includes("preview") && maskPath && estimate && estimate.scan === defaults.scan
      && estimate.maskId === maskPath.split("/")[2] && estimate.slices.length) {
    return { slices: estimate.slices, values: estimate.values, source: `the preview (${estimate.slices.length} of ${defaults.shape[0]} slices estimated)` };
  }
  if (result && result.scan === defaults.scan && result.uncertainty && result.uncertainty.slices.length) {
    return { slices: result.uncertainty.slices, values: result.uncertainty.mean, source: `job ${result.job_id} (${result.uncertainty.slices.length} slices)` };
  }
  return null;
}

function drawUncertaintyStrip() {
  const container = document.getElementById("uncertainty-strip");
  const inputs = typeof viewerState !== "undefined" ? viewerState.inputs : null;
  if (!container) {
    return;
  }
  const along = inputs ? uncertaintyAlongZ(inputs) : null;
  const caption = document.getElementById("uncertainty-caption");
  const shown = Boolean(along) && inputs[1] === "z";
  container.style.visibility = shown ? "visible" : "hidden";  // its room is kept: the slice view must not change size
  if (caption) {
    caption.textContent = !along ? "" : (inputs[1] === "z"
      ? `Uncertainty along z (the strip under the slider), from ${along.source}.`
      : "Uncertainty is estimated along z: switch to z to see it.");
  }
  if (!shown) {
    return;
  }
  let canvas = container.querySelector("canvas");
  if (!canvas) {
    canvas = document.createElement("canvas");
    canvas.setAttribute("aria-label", "Uncertainty along z");
    container.appendChild(canvas);
  }
  const width = Math.max(1, canvas.clientWidth), height = Math.max(1, canvas.clientHeight);
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  const depth = inputs[0].shape[0];
  // Heights and colours span the estimates' own range: they differ by hundredths, and those differences guide the user.
  const lowest = Math.min(...along.values), highest = Math.max(...along.values);
  const bar = Math.max(2, width / depth);
  along.slices.forEach((z, position) => {
    const level = 0.15 + 0.85 * (along.values[position] - lowest) / Math.max(highest - lowest, 1e-6);
    context.fillStyle = `rgba(255, ${Math.round(200 * (1 - level))}, 0, ${0.25 + 0.75 * level})`;
    context.fillRect(Math.min(width - bar, (z / Math.max(1, depth - 1)) * (width - bar)), height * (1 - level), bar, height * level);
  });
}

// U and the button: to the most uncertain slice not painted yet; again, to the next most uncertain.
// (`previewState.lastJump`: the slice the last press went to, and its ranking.)
function nextUncertainSlice() {
  const inputs = typeof viewerState !== "undefined" ? viewerState.inputs : null;
  const say = (text) => { const message = document.getElementById("paint-next-message"); if (message) { message.textContent = text; } };
  const along = inputs ? uncertaintyAlongZ(inputs) : null;
  if (!along) {
    say("No uncertainty yet: switch the preview on (V) or show a finished job's result.");
    return;
  }
  if (inputs[1] !== "z") {
    say("Uncertainty is estimated along z: switch to z first.");
    return;
  }
  const annotations = inputs[7];
  const painted = new Set(((annotations && annotations.strokes) || []).filter((stroke) => stroke.axis === "z").map((stroke) => stroke.index));
  const ranked = along.slices.map((z, position) => [z, along.values[position]])
    .filter(([z]) => !painted.has(z)).sort((a, b) => b[1] - a[1]);
  if (!ranked.length) {
    say("Every slice estimated is painted already.");
    return;
  }
  // Pressed again on the slice it went to: the next in the ranking as it stood at the first press (the
  // estimate changes as slices are previewed; the tour should not); from anywhere else: the top.
  const last = previewState.lastJump;
  const continuing = last && last.z === inputs[2];
  const ranking = continuing ? last.ranking : ranked;
  const position = continuing ? (last.position + 1) % ranking.length : 0;
  const [target, value] = ranking[position];
  previewState.lastJump = { z: target, ranking: ranking, position: position };
  // Through Dash, as the jumps to painted slices go: a slice Dash is still being told of must not land after this one.
  window.dash_clientside.set_props("slice-index", { data: target });
  const rank = position + 1;
  say(`Went to z = ${target}: uncertainty ${value.toFixed(3)}, the ${rank === 1 ? "" : `${ordinal(rank)} `}most uncertain of ${ranking.length} slices not painted.`);
}

function ordinal(rank) {
  const suffix = rank % 100 >= 11 && rank % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[rank % 10] || "th");
  return `${rank}${suffix}`;
}

document.addEventListener("click", function (event) {
  if (event.target.closest && event.target.closest("#next-uncertain")) {
    nextUncertainSlice();
  }
});
