"""Audio in, turns out: PCM16 framing, resampling, voice activity detection and endpointing;
and the session's wire formats (PCM16 at 24 kHz, G.711 µ-law and A-law at 8 kHz) both ways.

Everything here is pure computation on sample buffers: no sockets, no clocks, no I/O. Time is
derived from sample counts, so the same input always gives the same turns.
"""
