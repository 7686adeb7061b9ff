"""How fast each backend is, for the router's `ReplicaView.prefill_tokens_per_s`/`decode_step_s`.

Two sources, per backend. A `shunter profile` file (`profile = "..."` in its `[[backends]]`
entry) gives a fitted step-time model: the composition root turns it into a `SpeedModel` with
the simulator's own definition (`shunter.sim.cost.speed`), so a profiled backend looks to the
router exactly as a simulated replica with that profile does. Otherwise a `SpeedMeter`
measures the running traffic:

- decode: the gaps between a stream's tokens. Each stream adds up its gaps and the tokens they
  delivered (a chunk may carry several: `usage.completion_tokens` counts them; without usage a
  non-empty chunk is one token) and hands the meter one sample every FLUSH_TOKENS tokens and at
  its end: y = mean gap per token, x = mean number of requests streaming there, weighted by
  tokens. The mean over a window, not each gap, so that chunks a slow client held back and then
  read back to back still average to the backend's rate.
  decode_step_s(n) is the fitted line at n requests, its slope >= 0 and n held within two
  standard deviations of the batch sizes measured (no extrapolation far beyond the data); with
  too little spread in x it is the mean gap.
- prefill: time to first token against the request's uncached prompt tokens (the backend's
  `usage`, less its reported cached tokens), TTFT ~ fixed + uncached / rate: the fitted line's
  slope is 1 / rate (the fixed part, HTTP and scheduling overhead, is not prefill work). TTFT
  also holds time queued inside the backend, which no line in the prompt's length explains, so
  a request is a sample only if, when it was dispatched, nothing else of the gateway's waited
  there for its first token, the backend's batch had a free slot (`max_num_seqs`, if known) and
  its last report showed no other client's request waiting. A backend saturated for good then
  keeps its last estimate. A single-chunk answer (its first chunk holds more than one token) is
  no TTFT sample. When the line is unusable (too little spread in prompt lengths, a slope <= 0
  or a negative intercept) the rate is mean uncached tokens / mean TTFT, a lower bound.

Both fits are least squares with exponential forgetting (FORGET_SAMPLES: the memory, in
samples), kept as West's weighted running mean and co-moments: five floats per fit, updated
once per request or per FLUSH_TOKENS tokens; per chunk a stream does a few float additions.
Until MIN_SAMPLES samples exist a field is None and the router's defaults apply. A backend
with prefix caching that does not report cached tokens makes cache hits look like fast
prefills: the estimate is then optimistic.
"""

from __future__ import annotations

import math
from typing import Protocol

from shunter.backend.protocol import GenerateChunk, Usage

__all__ = ["FLUSH_TOKENS", "FORGET_SAMPLES", "MIN_SAMPLES", "ForgettingLine", "SpeedMeter",
           "SpeedModel", "StreamTimer"]

FORGET_SAMPLES = 64  # the fits' memory: each sample's weight decays by 1 - 1/64 per new sample
MIN_SAMPLES = 8  # samples a fit needs before its field is reported
FLUSH_TOKENS = 16  # a stream hands its decode gaps to the meter every this many tokens
MIN_BATCH_VARIANCE = 0.25  # requests^2: less spread in batch size fits the mean gap only
MIN_RELATIVE_SPREAD = 0.1  # prompt lengths' std / mean below which the TTFT line is not fitted
EXTRAPOLATION_STDS = 2.0  # decode_step_s holds its batch size within this many stds of the data
MIN_STEP_FRACTION = 0.1  # decode_step_s is at least this fraction of the mean gap measured


class SpeedModel(Protocol):
    """A backend's speed from a model of its steps (`shunter.sim.cost.speed.ReplicaSpeeds`)."""

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens the backend prefills per second."""
        ...

    def decode_step_s(self, num_running: int, num_running_tokens: int) -> float:
        """Wall time of one decode step of `num_running` requests holding that many KV tokens."""
        ...


class ForgettingLine:
    """Weighted least-squares line y ~ a + b x with exponential forgetting (module doc)."""

    __slots__ = ("decay", "mean_x", "mean_y", "num_samples", "sum_dx2", "sum_dxdy", "weight")

    def __init__(self, forget_samples: float = FORGET_SAMPLES) -> None:
        if forget_samples < 1:
            raise ValueError(f"forget_samples must be >= 1, got {forget_samples}")
        self.decay = 1.0 - 1.0 / forget_samples
        self.weight = self.mean_x = self.mean_y = 0.0
        # weighted sums of (x - mean_x)^2 and of (x - mean_x)(y - mean_y)
        self.sum_dx2 = self.sum_dxdy = 0.0
        self.num_samples = 0

    def add(self, x: float, y: float, weight: float = 1.0) -> None:
        """One sample; older ones weigh `decay` times less after it."""
        # West (1979): running weighted mean and co-moments; forgetting scales the old weight
        # and co-moments alike, which leaves the means where they are
        self.weight = w = self.decay * self.weight + weight
        dx = x - self.mean_x
        self.mean_x += weight / w * dx
        self.mean_y += weight / w * (y - self.mean_y)
        self.sum_dx2 = self.decay * self.sum_dx2 + weight * dx * (x - self.mean_x)
        self.sum_dxdy = self.decay * self.sum_dxdy + weight * dx * (y - self.mean_y)
        self.num_samples += 1

    @property
    def variance_x(self) -> float:
        return self.sum_dx2 / self.weight if self.weight else 0.0

    @property
    def slope(self) -> float:
        return self.sum_dxdy / self.sum_dx2 if self.sum_dx2 > 0 else 0.0


class StreamTimer:
    """One request's timings at one backend, from dispatch to its last chunk."""

    __slots__ = ("dispatched_s", "first_s", "gap_batch", "gap_s", "gap_tokens", "is_clean",
                 "last_s", "num_cached_tokens", "num_tokens", "usage")

    def __init__(self, dispatched_s: float, is_clean: bool) -> None:
        self.dispatched_s = dispatched_s
        self.is_clean = is_clean  # no queue at the backend when dispatched: TTFT is a sample
        self.first_s: float | None = None
        self.last_s = 0.0
        self.num_tokens = 0
        self.gap_s = 0.0  # time between chunks not yet handed to the meter
        self.gap_tokens = 0  # tokens those gaps delivered
        self.gap_batch = 0.0  # sum over them of requests streaming at the backend x tokens
        self.usage: Usage | None = None
        self.num_cached_tokens: int | None = None


class SpeedMeter:
    """Measured speeds of one backend (module doc)."""

    __slots__ = ("decode", "prefill", "prefill_tokens_per_s")

    def __init__(self, forget_samples: float = FORGET_SAMPLES) -> None:
        self.decode = ForgettingLine(forget_samples)  # token gap (s) on requests streaming
        self.prefill = ForgettingLine(forget_samples)  # TTFT (s) on uncached prompt tokens
        self.prefill_tokens_per_s: float | None = None

    def on_chunk(self, timer: StreamTimer, now_s: float, chunk: GenerateChunk,
                 num_streaming: int) -> None:
        """A chunk of `timer`'s stream arrived at `now_s`; `num_streaming`: requests streaming
        at the backend now (this one included)."""
        usage = chunk.usage
        if usage is not None:
            timer.usage = usage
            num_tokens = usage.completion_tokens
        else:
            num_tokens = timer.num_tokens + (chunk.text != "")
        if chunk.num_cached_tokens is not None:
            timer.num_cached_tokens = chunk.num_cached_tokens
        if timer.first_s is None:
            timer.first_s = timer.last_s = now_s
            timer.num_tokens = num_tokens
            if num_tokens > 1:  # not streamed token by token: the first chunk came late
                timer.is_clean = False
            return
        new_tokens = num_tokens - timer.num_tokens
        if new_tokens <= 0:  # a usage-only chunk: no token, no gap
            return
        timer.gap_s += now_s - timer.last_s
        timer.gap_tokens += new_tokens
        timer.gap_batch += num_streaming * new_tokens
        timer.last_s = now_s
        timer.num_tokens = num_tokens
        if timer.gap_tokens >= FLUSH_TOKENS:
            self._flush(timer)

    def on_done(self, timer: StreamTimer, num_prompt_tokens: int) -> None:
        """`timer`'s stream ended (or failed); `num_prompt_tokens`: the gateway's estimate, for a
        backend that reports no usage."""
        if timer.gap_tokens:
            self._flush(timer)
        if timer.first_s is None or not timer.is_clean:
            return
        usage = timer.usage
        num_prompt = usage.prompt_tokens if usage is not None else num_prompt_tokens
        self.add_prefill(num_prompt - (timer.num_cached_tokens or 0),
                         timer.first_s - timer.dispatched_s)

    def _flush(self, timer: StreamTimer) -> None:
        n = timer.gap_tokens
        self.add_decode(timer.gap_batch / n, timer.gap_s / n, n)
        timer.gap_s = timer.gap_batch = 0.0
        timer.gap_tokens = 0

    def add_prefill(self, num_uncached_tokens: int, ttft_s: float) -> None:
        """One clean TTFT sample."""
        if num_uncached_tokens <= 0 or ttft_s <= 0:
            return
        line = self.prefill
        line.add(num_uncached_tokens, ttft_s)
        if line.num_samples < MIN_SAMPLES:
            return
        slope = line.slope
        spread = math.sqrt(line.variance_x)
        if (spread >= MIN_RELATIVE_SPREAD * line.mean_x and slope > 0
                and line.mean_y - slope * line.mean_x >= 0):
            self.prefill_tokens_per_s = 1.0 / slope
        else:
            self.prefill_tokens_per_s = line.mean_x / line.mean_y

    def add_decode(self, num_streaming: float, gap_s: float, num_tokens: int = 1) -> None:
        """One decode sample: `num_tokens` tokens a mean `gap_s` apart at that batch size."""
        self.decode.add(num_streaming, gap_s, num_tokens)

    def decode_step_s(self, num_running: int) -> float | None:
        """The measured step time at `num_running` requests, None until enough samples."""
        line = self.decode
        if line.num_samples < MIN_SAMPLES:
            return None
        variance = line.variance_x
        slope = line.slope
        if variance < MIN_BATCH_VARIANCE or slope <= 0:
            return line.mean_y
        reach = EXTRAPOLATION_STDS * math.sqrt(variance)
        x = min(max(float(max(num_running, 1)), line.mean_x - reach), line.mean_x + reach)
        # a steep noisy line may cross zero left of the data: a step never takes no time
        return max(line.mean_y + slope * (x - line.mean_x), MIN_STEP_FRACTION * line.mean_y)
