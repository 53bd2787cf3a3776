// The tutor's voice: an AudioWorklet that plays PCM16 mono chunks (24 kHz from the server) at
// the context's rate, with a small jitter buffer.
//
// Messages in:  {type: "push", buffer: ArrayBuffer}  PCM16 little-endian, appended to the queue
//               {type: "end"}    the answer's audio is complete: play what is queued, even if
//                                it is less than the jitter buffer
//               {type: "flush"}  stop at once and drop everything queued (barge-in)
// Messages out: {type: "status", played, buffered, playing, flushed?} on every start, stop and
//               flush, and every ~50 ms while playing. `played` counts source samples played.
//
// Playback starts once `prebufferMs` of audio is queued (or at "end"), and re-buffers after an
// underrun. Samples are read as one continuous stream across chunks, interpolated linearly to
// the output rate, so chunk boundaries are inaudible.

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.inRate = opts.inputRate || 24000;
    this.step = this.inRate / sampleRate; // source samples per output sample
    this.prebuffer = Math.round(((opts.prebufferMs ?? 100) * this.inRate) / 1000);
    this.queue = []; // Float32Array chunks
    this.head = 0; // read position in queue[0]
    this.buffered = 0; // source samples queued
    this.played = 0;
    this.playing = false;
    this.ending = false;
    this.a = 0; // the two source samples the output is between, and where
    this.b = 0;
    this.frac = 0;
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message.type === "push") {
      const pcm = new Int16Array(message.buffer);
      if (!pcm.length) return;
      const chunk = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) chunk[i] = pcm[i] / 32768;
      this.queue.push(chunk);
      this.buffered += chunk.length;
    } else if (message.type === "end") {
      this.ending = this.playing || this.buffered > 0; // else nothing is left to play
      this.report();
    } else if (message.type === "flush") {
      this.queue = [];
      this.head = 0;
      this.buffered = 0;
      this.playing = false;
      this.ending = false;
      this.report({ flushed: true });
    }
  }

  take() {
    while (this.queue.length) {
      const chunk = this.queue[0];
      if (this.head < chunk.length) {
        this.buffered--;
        this.played++;
        return chunk[this.head++];
      }
      this.queue.shift();
      this.head = 0;
    }
    return undefined;
  }

  report(extra) {
    this.sinceReport = 0;
    this.port.postMessage({ type: "status", played: this.played, buffered: this.buffered,
                            playing: this.playing, ...extra });
  }

  process(_inputs, outputs) {
    const output = outputs[0];
    const out = output[0];
    if (!this.playing && (this.buffered >= this.prebuffer || (this.ending && this.buffered > 0))) {
      this.playing = true;
      this.a = this.take();
      const next = this.take();
      this.b = next === undefined ? this.a : next;
      this.frac = 0;
      this.report();
    }
    let i = 0;
    if (this.playing) {
      for (; i < out.length; i++) {
        out[i] = this.a + (this.b - this.a) * this.frac;
        this.frac += this.step;
        let stopped = false;
        while (this.frac >= 1) {
          this.frac -= 1;
          this.a = this.b;
          const next = this.take();
          if (next === undefined) {
            stopped = true;
            break;
          }
          this.b = next;
        }
        if (stopped) {
          i++;
          this.playing = false; // underrun, or the end: wait for the jitter buffer again
          this.ending = false;
          this.report();
          break;
        }
      }
    }
    for (; i < out.length; i++) out[i] = 0;
    for (let c = 1; c < output.length; c++) output[c].set(out);
    this.sinceReport += out.length;
    if (this.playing && this.sinceReport >= sampleRate / 20) this.report();
    return true;
  }
}

registerProcessor("pcm-player", PlayerProcessor);
