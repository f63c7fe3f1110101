// Drawing a digit for LeNet, and turning the drawing into what MNIST digits look like: white ink on black,
// the digit scaled into a 20x20 box and centred by its centre of mass in a 28x28 image, pixel values / 255
// (the mnist-lenet manifest entry says so). Without that normalisation LeNet misreads most drawn digits.

const SIDE = 28;
const BOX = 20;
const STROKE = 0.075; // of the canvas width

/** Black canvas, round white strokes under the pointer (mouse, pen or touch). */
export function setUpDrawing(canvas, { clear = false } = {}) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (clear || canvas.dataset.drawing) return;
  canvas.dataset.drawing = "ready";
  let last = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [((event.clientX - box.left) * canvas.width) / box.width, ((event.clientY - box.top) * canvas.height) / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture?.(event.pointerId);
    last = at(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = at(event);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = canvas.width * STROKE;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...last);
    ctx.lineTo(...next);
    ctx.stroke();
    last = next;
  });
  for (const name of ["pointerup", "pointercancel", "pointerleave"]) canvas.addEventListener(name, () => (last = null));
}

function inkBox(data, width, height) {
  let [left, top, right, bottom] = [width, height, -1, -1];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (data[(y * width + x) * 4] > 16) {
        left = Math.min(left, x);
        right = Math.max(right, x);
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
      }
    }
  }
  return right < 0 ? null : { left, top, width: right - left + 1, height: bottom - top + 1 };
}

function centreOfMass(grey) {
  let [total, sx, sy] = [0, 0, 0];
  for (let y = 0; y < SIDE; y += 1) {
    for (let x = 0; x < SIDE; x += 1) {
      const v = grey[y * SIDE + x];
      total += v;
      sx += v * x;
      sy += v * y;
    }
  }
  return total ? [sx / total, sy / total] : [SIDE / 2, SIDE / 2];
}

/** The drawing as 784 MNIST-style pixel values in [0, 1], row-major; throws when nothing is drawn. */
export function canvasToMnist(canvas) {
  const source = canvas.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, canvas.width, canvas.height);
  const box = inkBox(source.data, canvas.width, canvas.height);
  if (!box) throw new Error("draw a digit first");
  const scale = BOX / Math.max(box.width, box.height);
  const [w, h] = [box.width * scale, box.height * scale];
  const small = document.createElement("canvas");
  small.width = SIDE;
  small.height = SIDE;
  const ctx = small.getContext("2d", { willReadFrequently: true });
  const draw = (dx, dy) => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIDE, SIDE);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(canvas, box.left, box.top, box.width, box.height, dx, dy, w, h);
    const data = ctx.getImageData(0, 0, SIDE, SIDE).data;
    return Array.from({ length: SIDE * SIDE }, (_, i) => data[i * 4] / 255);
  };
  const centred = draw((SIDE - w) / 2, (SIDE - h) / 2);
  const [cx, cy] = centreOfMass(centred);
  return draw((SIDE - w) / 2 + Math.round(SIDE / 2 - cx), (SIDE - h) / 2 + Math.round(SIDE / 2 - cy));
}
