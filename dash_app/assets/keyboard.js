// The keyboard model of the web app: shortcuts act whenever the focus is not in a text
// field, and each key acts once. Listening on the window in the capture phase runs before
// the page's own widgets (Dash's dropdown opens its search on any letter; a slider handle
// moves on arrow keys), so a shortcut is taken here and stopped.
//
//   Arrow keys, PageUp/PageDown    one slice, ten slices       Home/End  first, last slice
//   1-9                            choose a class             [ and ]   brush size
//   B brush, E eraser, P polygon, R rectangle, H pan;         Space held: pan while held
//   L labels on/off, O result overlay on/off, V live preview on/off, T the three planes on/off
//   U the next slice the model is least sure about
//   Ctrl+Z undo, Ctrl+Shift+Z or Ctrl+Y redo
const SLICE_STEPS = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: 10, PageDown: -10 };
const TOOL_KEYS = { b: "brush", e: "eraser", p: "polygon", r: "rectangle", h: "pan" };
const LAYER_KEYS = { l: "labels", o: "result", v: "preview", t: "planes" };
const TEXT_INPUT_TYPES = ["text", "search", "number", "email", "password", "url", "tel"];
const spacePan = { toolBefore: null };
const keysTaken = new Set();  // their keyup is stopped too: Dash's dropdown opens its search on a keyup

// Keys belong to a text field being typed in; buttons, checkboxes and radio buttons leave them to the app.
function inTextField(element) {
  return element && (element.tagName === "TEXTAREA" || element.isContentEditable
    || (element.tagName === "INPUT" && TEXT_INPUT_TYPES.includes(element.type)));
}

// Arrow keys move a focused slider handle (window, opacity, brush size) and nothing else.
function onSliderHandle(element) {
  return element && (element.getAttribute("role") === "slider"
    || (element.tagName === "INPUT" && element.type === "range" && !element.closest("#slice-slider")));
}

function setProp(id, prop, value) {
  window.dash_clientside.set_props(id, { [prop]: value });
}

function checkedValue(id) {
  const checked = document.querySelector(`#${id} input:checked`);
  return checked ? checked.value : null;
}

function toggleLayer(layer) {
  const boxes = [...document.querySelectorAll("#shown-layers input[type=checkbox]")];
  const shown = boxes.filter((box) => box.checked).map((box) => box.value);
  setProp("shown-layers", "value", shown.includes(layer) ? shown.filter((name) => name !== layer) : [...shown, layer]);
}

function changeBrushSize(step) {
  const handle = document.querySelector("#brush-size [role=slider]");
  const current = Number(handle ? handle.getAttribute("aria-valuenow") : 5);
  setProp("brush-size", "value", Math.min(60, Math.max(1, current + step)));
}

function chooseClass(position) {
  const choice = document.querySelectorAll("#active-class input[type=radio]")[position];
  if (choice) {
    setProp("active-class", "value", Number(choice.value));
  }
}

function press(buttonId) {
  const button = document.getElementById(buttonId);
  if (button && !button.disabled) {
    button.click();
  }
}

// The action of a key, or null when the key is not a shortcut here.
function shortcut(event) {
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const command = event.ctrlKey || event.metaKey;
  if (command && key === "z") {
    return () => press(event.shiftKey ? "redo" : "undo");
  }
  if (command && key === "y") {
    return () => press("redo");
  }
  if (command || event.altKey) {
    return null;
  }
  if (key in SLICE_STEPS && !onSliderHandle(event.target)) {
    return () => stepSlices(SLICE_STEPS[key]);
  }
  if ((key === "Home" || key === "End") && !onSliderHandle(event.target)) {
    return () => stepSlices(key === "Home" ? -Infinity : Infinity);
  }
  if (key === "[" || key === "]") {
    return () => changeBrushSize(key === "]" ? 1 : -1);
  }
  if (/^[1-9]$/.test(key)) {
    return () => chooseClass(Number(key) - 1);
  }
  if (key in TOOL_KEYS) {
    return () => setProp("tool", "value", TOOL_KEYS[key]);
  }
  if (key in LAYER_KEYS) {
    return () => toggleLayer(LAYER_KEYS[key]);
  }
  if (key === "u") {
    return () => press("next-uncertain");
  }
  if (key === " ") {
    return () => {
      if (!event.repeat && spacePan.toolBefore === null) {
        spacePan.toolBefore = checkedValue("tool") || "brush";
        setProp("tool", "value", "pan");
      }
    };
  }
  return null;
}

function movesThroughSlices(event) {
  return event.key in SLICE_STEPS || event.key === "Home" || event.key === "End";
}

function stepSlices(step) {
  if (viewerState.index === null) {
    return;
  }
  showSlice(Number.isFinite(step) ? viewerState.index + step : (step < 0 ? 0 : viewerState.last));
}

window.addEventListener("keydown", function (event) {
  if (inTextField(event.target)) {
    if (event.key === "Enter" && event.target.closest(".dash-slider-container")) {
      event.target.blur();  // Dash's slider applies a typed value when its box loses the focus
    }
    return;
  }
  if (!window.dash_clientside || !window.dash_clientside.set_props) {
    return;
  }
  const action = shortcut(event);
  if (!action) {
    tellDash();  // whatever the key does may run a callback that reads the slice
    return;
  }
  event.preventDefault();
  event.stopPropagation();
  keysTaken.add(event.code);
  if (!movesThroughSlices(event)) {
    tellDash();  // Dash must know the slice before a callback that reads it; a slice step tells it itself, later
  }
  action();
}, true);

window.addEventListener("keyup", function (event) {
  if (keysTaken.delete(event.code)) {
    event.preventDefault();
    event.stopPropagation();
  }
  if (event.key === " " && spacePan.toolBefore !== null) {
    setProp("tool", "value", spacePan.toolBefore);
    spacePan.toolBefore = null;
  }
}, true);

// A pick in a list, or a start of painting, hands the keys back to the viewer: a focused
// dropdown would take the next letter as the start of a search.
document.addEventListener("pointerdown", function (event) {
  if (event.target.closest && event.target.closest("#slice-view") && document.activeElement) {
    document.activeElement.blur();
  }
}, true);
document.addEventListener("pointerup", function (event) {
  if (event.target.closest && event.target.closest(".dash-dropdown-content [role=option]")) {
    setTimeout(() => document.activeElement && document.activeElement.blur(), 50);
  }
}, true);
