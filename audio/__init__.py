"""Audio in, turns out: PCM16 framing, resampling, voice activity detection and endpointing.

Everything here is pure computation on sample buffers: no sockets, no clocks, no I/O. Time is
derived from sample counts, so the same input always gives the same turns.
"""
