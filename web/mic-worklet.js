// The microphone's AudioWorklet: resamples the context's rate (44.1 or 48 kHz, usually) to
// 16 kHz and posts 20 ms frames of little-endian PCM16 mono: 320 samples, 640 bytes each, as
// transferred ArrayBuffers, ready to go out as binary WebSocket frames.
//
// Resampling: a windowed-sinc low-pass (cutoff 7.2 kHz, below the new Nyquist of 8 kHz) is
// evaluated only where output samples fall, with linear interpolation between the two filtered
// input samples around each output position. Works for any input rate, including non-integer
// ratios (44.1 kHz).

const OUT_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const CUTOFF_HZ = 7200;

function lowPass(inRate) {
  const ratio = inRate / OUT_RATE;
  const half = Math.max(4, Math.ceil(ratio * 8));
  const fc = CUTOFF_HZ / inRate; // cycles per input sample
  const taps = new Float32Array(2 * half + 1);
  let sum = 0;
  for (let k = -half; k <= half; k++) {
    const sinc = k === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * k) / (Math.PI * k);
    const window = 0.42 + 0.5 * Math.cos((Math.PI * k) / half) + 0.08 * Math.cos((2 * Math.PI * k) / half);
    taps[k + half] = sinc * window; // Blackman
    sum += taps[k + half];
  }
  for (let i = 0; i < taps.length; i++) taps[i] /= sum; // unity gain at DC
  return { taps, half };
}

class MicProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / OUT_RATE; // input samples per output sample
    this.passthrough = sampleRate === OUT_RATE;
    const { taps, half } = this.passthrough ? { taps: new Float32Array([1]), half: 0 } : lowPass(sampleRate);
    this.taps = taps;
    this.half = half;
    this.buf = new Float32Array(8192);
    this.len = half; // `half` zeros of history before the first sample
    this.pos = half; // position (in `buf`) of the next output sample
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
  }

  fir(center) {
    const { taps, half, buf } = this;
    let acc = 0;
    for (let k = 0, j = center - half; k < taps.length; k++, j++) acc += taps[k] * buf[j];
    return acc;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = v < 0 ? v * 32768 : v * 32767;
    if (this.filled === FRAME_SAMPLES) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    const channel = input && input[0];
    if (!channel) return true; // no source connected (yet)
    if (this.len + channel.length > this.buf.length) {
      const bigger = new Float32Array((this.len + channel.length) * 2);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(channel, this.len);
    this.len += channel.length;
    // an output sample at `pos` needs input up to floor(pos) + 1 + half
    while (Math.floor(this.pos) + 1 + this.half < this.len) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = this.fir(i);
      this.emit(frac === 0 ? a : a + (this.fir(i + 1) - a) * frac);
      this.pos += this.ratio;
    }
    // keep only the history the filter still needs
    const drop = Math.floor(this.pos) - this.half;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    return true;
  }
}

registerProcessor("mic-capture", MicProcessor);
