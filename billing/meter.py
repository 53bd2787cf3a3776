"""The voice meter of one live session: pure and clock-free, fed with the audio actually received.

Every accepted audio chunk adds its duration. The meter batches it into charges of `step_ms`
(one shared-counter round trip per second of audio, not per 20 ms frame) and keeps a local
estimate of what is left, so exhaustion is noticed at the chunk that crosses the limit, without
waiting for the counter's answer. The counter's answer (`charged`) brings in what other sessions
and processes of the same user used meanwhile. A charge that could not be recorded is put back
and sent with the next one, so no audio goes unbilled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VoiceUsage:
    """Milliseconds of voice used in the current day and month (UTC), across all processes."""

    day_ms: int = 0
    month_ms: int = 0


@dataclass(frozen=True)
class VoiceLimits:
    day_ms: int | None = None  # None: unlimited
    month_ms: int | None = None

    def remaining_ms(self, usage: VoiceUsage) -> int | None:
        left = [limit - used for limit, used in ((self.day_ms, usage.day_ms),
                                                 (self.month_ms, usage.month_ms))
                if limit is not None]
        return max(0, min(left)) if left else None


class VoiceMeter:
    """Runs once per audio chunk, so `audio()` is a few additions and comparisons: the limit left
    is worked out when the counter answers, not per chunk."""

    def __init__(self, limits: VoiceLimits, used: VoiceUsage = VoiceUsage(), *,
                 step_ms: int = 1000) -> None:
        self.limits = limits
        self.step_ms = step_ms
        self.pending_ms = 0.0  # received, not yet sent to the counter
        self.in_flight_ms = 0  # sent, answer not yet back
        self.received_ms = 0.0  # all audio of this session
        self.exhausted = False
        self._set_used(used)

    def _set_used(self, used: VoiceUsage) -> None:
        self.used = used  # as last reported by the shared counter
        self._left = self.limits.remaining_ms(used)  # None: unlimited
        self._update_exhausted()

    def _update_exhausted(self) -> None:
        self.exhausted = self._left is not None and \
            self.pending_ms + self.in_flight_ms >= self._left

    @property
    def remaining_ms(self) -> int | None:
        """What is left by the local estimate: the counter's figure minus what is not in it yet."""
        if self._left is None:
            return None
        return max(0, int(self._left - self.pending_ms - self.in_flight_ms))

    def audio(self, ms: float) -> int | None:
        """Account for a received chunk; returns milliseconds to charge now, or None."""
        self.received_ms += ms
        pending = self.pending_ms = self.pending_ms + ms
        if self._left is not None and pending + self.in_flight_ms >= self._left:
            self.exhausted = True
            return None if self.in_flight_ms else self._take()  # charge the last bit at once
        if self.in_flight_ms or pending < self.step_ms:
            return None
        return self._take()

    def flush(self) -> int | None:
        """At the end of the session: whatever is left to charge (None if nothing, or busy)."""
        return None if self.in_flight_ms or self.pending_ms < 1 else self._take()

    def charged(self, usage: VoiceUsage) -> int | None:
        """The counter recorded the charge in flight; returns the next charge due, if any."""
        self.in_flight_ms = 0
        self._set_used(usage)
        if self.pending_ms >= self.step_ms or (self.exhausted and self.pending_ms >= 1):
            return self._take()
        return None

    def charge_failed(self) -> None:
        """The counter could not be reached: keep the amount for the next charge."""
        self.pending_ms += self.in_flight_ms
        self.in_flight_ms = 0

    def _take(self) -> int:
        ms = int(self.pending_ms)
        self.pending_ms -= ms
        self.in_flight_ms = ms
        return ms
