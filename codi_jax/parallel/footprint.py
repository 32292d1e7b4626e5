"""What one compiled program needs per device, and the largest batch whose program fits.

`Footprint.of(compiled)` reads the executable's memory_analysis() and cost_analysis(). On TPU these are
the compiler's own buffer assignment: arguments (the state and batch shards), outputs, the part of the
outputs that reuses donated argument buffers (alias), temporaries, and the program itself; the device
holds arguments + outputs - alias + temps + code at the peak. FLOPs are per device and count what the
program executes (recomputation under remat included; Pallas kernels, opaque custom calls, count 0).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jax.errors import JaxRuntimeError

from codi_jax.parallel.topology import GIB


@dataclasses.dataclass(frozen=True)
class Footprint:
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    flops: float

    @classmethod
    def of(cls, compiled) -> "Footprint":
        m = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        return cls(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes, alias=m.alias_size_in_bytes,
                   temp=m.temp_size_in_bytes, code=m.generated_code_size_in_bytes,
                   flops=float((cost or {}).get("flops", 0.0)))

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp + self.code

    def rows(self, capacity: int) -> list[tuple[str, str]]:
        return [("arguments", size(self.argument)), ("outputs", size(self.output)),
                ("aliased (donated)", size(self.alias)), ("temps", size(self.temp)), ("code", size(self.code)),
                ("total", f"{size(self.total)} of {size(capacity)} ({100 * self.total / capacity:.1f} %)"),
                ("FLOPs", f"{self.flops:.4g} per device per step")]


def size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"


def is_out_of_memory(error: Exception) -> bool:
    """Whether a compile failed because the program does not fit the device's memory."""
    return isinstance(error, JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def largest_batch(total_at: Callable[[int], int | None], start: int, quantum: int, limit: int):
    """(largest multiple of `quantum` whose program needs at most `limit` bytes per device, or 0; {batch: bytes
    or None where the compiler ran out of memory}), with as few compiles as the memory's growth allows.

    Memory per device grows about linearly in the batch (fixed state + activations per example), so once two
    batches have fitted the next guess is where their line meets the limit; a guess outside the bracket
    (largest fitting, smallest failing) falls back to doubling or to the bracket's middle."""
    seen: dict[int, int | None] = {}
    lo, hi, batch = 0, None, start
    while True:
        seen[batch] = total_at(batch)
        if seen[batch] is not None and seen[batch] <= limit:
            lo = batch
        else:
            hi = batch
        if hi is not None and hi - lo <= quantum:
            return lo, seen
        batch = _next_guess(lo, hi, seen, quantum, limit)


def _next_guess(lo: int, hi: int | None, seen: dict, quantum: int, limit: int) -> int:
    fitting = sorted(b for b, n in seen.items() if n is not None and n <= limit)
    guess = 2 * lo if hi is None else (lo + hi) // 2
    if len(fitting) >= 2:
        b1, b2 = fitting[-2:]
        slope = (seen[b2] - seen[b1]) / (b2 - b1)
        if slope > 0:
            guess = int(b2 + (limit - seen[b2]) / slope)
    guess = guess // quantum * quantum
    if hi is None:
        return max(guess, lo + quantum)
    if not lo < guess < hi:
        guess = (lo + hi) // 2 // quantum * quantum
    return guess if lo < guess < hi else lo + quantum
