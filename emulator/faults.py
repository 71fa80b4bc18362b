"""Fault injection for tests: error replies, latency and dropped replies, per operation or for all.

Off unless asked for. With a seed the sequence of decisions is reproducible (for calls made one at a time).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from emulator.errors import InternalServiceError
from emulator.throttle import check_operation


class InjectedFault(InternalServiceError):
    """The ``InternalServiceError`` answered by ``--fault-rate`` (the operation did not run)."""


@dataclass(frozen=True)
class PerOperation:
    """A value for every operation, with some operations overridden."""

    default: float = 0.0
    overrides: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, operation: str) -> float:
        """The value for ``operation``."""
        return self.overrides.get(operation, self.default)

    @property
    def active(self) -> bool:
        """Whether any operation has a non-zero value."""
        return self.default > 0 or any(v > 0 for v in self.overrides.values())

    def describe(self) -> dict[str, Any]:
        """The value as the admin API shows it."""
        return {"default": self.default, "operations": dict(sorted(self.overrides.items()))}

    @classmethod
    def parse(cls, specs: Iterable[str], *, fraction: bool) -> PerOperation:
        """``VALUE`` (every operation) and ``Op=VALUE`` (one operation) items; later ones win.

        Each spec may hold several comma-separated items.

        Raises:
            ValueError: not a number (a fraction in [0, 1] when ``fraction``, else >= 0), or an unknown operation.
        """
        default = 0.0
        overrides: dict[str, float] = {}
        for item in (i.strip() for spec in specs for i in spec.split(",")):
            if not item:
                continue
            name, sep, text = item.rpartition("=")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{item!r} is not VALUE or OPERATION=VALUE") from None
            if not (math.isfinite(value) and 0.0 <= value <= (1.0 if fraction else math.inf)):
                raise ValueError(f"{item!r}: the value must be " + ("in [0, 1]" if fraction else ">= 0"))
            if sep:
                overrides[check_operation(name.strip())] = value
            else:
                default = value
        return cls(default, MappingProxyType(overrides))


@dataclass(frozen=True)
class FaultConfig:
    """What to inject: ``fault_rate`` (500 without running), ``latency_ms`` (before running) and
    ``drop_rate`` (run, then close the connection without a reply)."""

    fault_rate: PerOperation = PerOperation()
    latency_ms: PerOperation = PerOperation()
    drop_rate: PerOperation = PerOperation()
    seed: int | None = None

    @property
    def active(self) -> bool:
        """Whether any fault can happen."""
        return self.fault_rate.active or self.latency_ms.active or self.drop_rate.active

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """This configuration with some kinds replaced, as the admin API takes them.

        ``changes`` may hold ``faultRate``, ``latencyMs`` and ``dropRate`` (each a list of the CLI
        option's values, e.g. ``["0.1", "PollForTask=1"]``; ``[]`` turns that kind off) and ``seed``.

        Raises:
            ValueError: an unknown key or a bad value.
        """
        unknown = sorted(set(changes) - {*_ADMIN_KINDS, "seed"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {[*_ADMIN_KINDS, 'seed']}")
        replaced: dict[str, Any] = {}
        for key, (attribute, fraction) in _ADMIN_KINDS.items():
            if key in changes:
                specs = changes[key]
                if not isinstance(specs, list) or not all(isinstance(v, str | int | float) for v in specs):
                    raise ValueError(f'{key} must be a list of values like "0.5" or "PollForTask=1"')
                replaced[attribute] = PerOperation.parse([str(v) for v in specs], fraction=fraction)
        if "seed" in changes:
            seed = changes["seed"]
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                raise ValueError("seed must be an integer or null")
            replaced["seed"] = seed
        return replace(self, **replaced)


#: Admin API key -> (FaultConfig attribute, whether the values are fractions).
_ADMIN_KINDS = {"faultRate": ("fault_rate", True), "latencyMs": ("latency_ms", False), "dropRate": ("drop_rate", True)}


@dataclass(frozen=True)
class Decision:
    """What happens to one call."""

    latency_s: float = 0.0
    fault: bool = False
    drop: bool = False


NO_FAULT = Decision()


class Faults:
    """Decides, call by call, which faults to inject.

    Args:
        config: The rates and latencies.
    """

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.config = config
        self._random = random.Random(config.seed)

    def configure(self, config: FaultConfig) -> None:
        """Inject ``config``'s faults from now on (the draws restart from its seed)."""
        with self._lock:
            self.config = config
            self._random = random.Random(config.seed)

    def decide(self, operation: str) -> Decision:
        """Draw the faults for one call of ``operation``; a faulted call is never also dropped."""
        with self._lock:
            config = self.config
            if not config.active:
                return NO_FAULT
            fault_p = config.fault_rate.of(operation)
            drop_p = config.drop_rate.of(operation)
            fault = fault_p > 0 and self._random.random() < fault_p
            drop = not fault and drop_p > 0 and self._random.random() < drop_p
        return Decision(config.latency_ms.of(operation) / 1000.0, fault, drop)

    def describe(self) -> dict[str, Any]:
        """The configuration as the admin API shows it."""
        return {
            "enabled": self.config.active,
            "faultRate": self.config.fault_rate.describe(),
            "latencyMs": self.config.latency_ms.describe(),
            "dropRate": self.config.drop_rate.describe(),
            "seed": self.config.seed,
        }
