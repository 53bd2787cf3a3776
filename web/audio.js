// Audio in and out: one AudioContext holding the microphone's worklet (16 kHz PCM16 frames out)
// and the player's worklet (the tutor's 24 kHz PCM16 in). Created on the Start click, since
// browsers only let a page start audio after a gesture.

export const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
};

// A file next to this module. addModule() takes a URL, not a module specifier, so the page's
// import map (the server maps each file of web/ to its content-hashed name, docs/web.md) is
// applied here through import.meta.resolve; without either, the plain name next to this file.
function moduleURL(specifier) {
  if (typeof import.meta.resolve === "function") return import.meta.resolve(specifier);
  return new URL(specifier, import.meta.url).href;
}

export class AudioEngine {
  constructor({ onFrame, onPlayer, prebufferMs = 100 }) {
    this.onFrame = onFrame; // (ArrayBuffer of 640 bytes) => void
    this.onPlayer = onPlayer; // (status from the player worklet) => void
    this.prebufferMs = prebufferMs;
    this.context = null;
    this.stream = null;
    this.source = null;
    this.mic = null;
    this.player = null;
  }

  async open() {
    if (this.context) {
      if (this.context.state === "suspended") await this.context.resume();
      return;
    }
    const context = new AudioContext({ latencyHint: "interactive" });
    this.context = context;
    await Promise.all([
      context.audioWorklet.addModule(moduleURL("./mic-worklet.js")),
      context.audioWorklet.addModule(moduleURL("./player-worklet.js")),
    ]);
    this.player = new AudioWorkletNode(context, "pcm-player", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { inputRate: 24000, prebufferMs: this.prebufferMs },
    });
    this.player.port.onmessage = (event) => this.onPlayer(event.data);
    this.player.connect(context.destination);
    if (context.state === "suspended") await context.resume();
  }

  get micOn() {
    return this.stream !== null;
  }

  async startMic() {
    if (this.stream) return;
    await this.open();
    const stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    this.stream = stream;
    this.source = this.context.createMediaStreamSource(stream);
    // no outputs: the node is a sink, processed without being connected to the speakers
    this.mic = new AudioWorkletNode(this.context, "mic-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
    });
    this.mic.port.onmessage = (event) => this.onFrame(event.data);
    this.source.connect(this.mic);
  }

  stopMic() {
    if (this.source) this.source.disconnect();
    if (this.mic) this.mic.port.onmessage = null;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = this.source = this.mic = null;
  }

  play(buffer) {
    if (this.player) this.player.port.postMessage({ type: "push", buffer }, [buffer]);
  }

  endOfAnswer() {
    if (this.player) this.player.port.postMessage({ type: "end" });
  }

  flush() {
    if (this.player) this.player.port.postMessage({ type: "flush" });
  }
}
