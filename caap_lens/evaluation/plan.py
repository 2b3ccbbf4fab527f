"""The evaluation plan: which methods (with which options) are scored by which metrics, on which targets.

A `Plan` is plain data. Its `hash` is a sha256 over everything that defines the numbers — the named
method rows and their options, the metrics, the targets policy, the split, the score, the curve
settings, the seed and the chunk size (the chunk fixes which units share a batched call, which is what
makes resumed and sharded runs give identical numbers). A results store remembers the hash of the plan
that wrote it and refuses any other.

Several settings of one method are separate named rows::

    Plan(methods=[MethodSpec("caap"),
                  MethodSpec("caap [0, 2) blur", method="caap", options={"layers": (0, 2), "context": "blur"})])

Plans load from TOML (`Plan.from_toml`) or a dict (`Plan.from_dict`)::

    targets = "all_present"
    metrics = ["deletion", "insertion", "pointing"]
    [[methods]]
    name = "caap"
    [[methods]]
    name = "caap_blur"
    method = "caap"
    options = { context = "blur", layers = [1, 3] }

Targets policies: ``"predicted"`` (one unit per item: the model's top class), ``"labelled"`` (one unit:
the item's first label), ``"all_present"`` (one unit per labelled class: multi-label scenes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TARGET_POLICIES = ("predicted", "labelled", "all_present")
SPLITS = ("dev", "test", "all")
PSEUDO_METHODS = ("random",)


class PlanError(ValueError):
    """A plan that cannot run: unknown method, metric, policy or option value."""


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a method (a name in `caap_lens.baselines.METHODS`, or ``"random"``)
    with its options, under a row name.

    Args:
        name: Row name (unique in a plan); also the method when ``method`` is None.
        method: The method to call; default ``name``.
        options: Keyword options of the method (JSON-able values; lists become tuples for ``layers``).
    """

    name: str
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def fn_name(self) -> str:
        return self.method or self.name

    def call_options(self) -> dict[str, Any]:
        """Options as the method takes them (``layers`` as a tuple)."""
        opts = dict(self.options)
        if isinstance(opts.get("layers"), list):
            opts["layers"] = tuple(opts["layers"])
        return opts

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.fn_name, "options": _jsonable(self.options)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    name = getattr(value, "__qualname__", None) or getattr(value, "name", None)
    if name is None:
        raise PlanError(f"option value {value!r} is not JSON-able and has no name: pass a name instead")
    return f"<{type(value).__name__} {name}>"


@dataclass(frozen=True)
class Plan:
    """Methods × metrics on a data split. See the module docstring.

    Args:
        methods: `MethodSpec` rows (strings are accepted: default options).
        metrics: Metric names in `caap_lens.evaluation.metrics.METRICS`.
        targets: ``"predicted"``, ``"labelled"`` or ``"all_present"``.
        split: ``"test"`` (items with ``index % dev_every != 0``), ``"dev"`` (the others) or ``"all"``.
        dev_every: Every ``dev_every``-th item (0, k, 2k, ...) is a dev item.
        score: Score of the curves and of object-removal effects (a `caap_lens.attribution.scores` name).
        perturbation_score: Score of Chefer's positive/negative curves; default ``score``.
        curve_steps: Deletion/insertion steps (default one patch per step).
        reference: Row the paired differences are taken against (default the first row).
        chunk: Items per committed chunk; the units of a chunk share one batched call per method row.
        batch_size: Images per forward pass inside metrics.
        seed: Seed of the ``random`` rows and of the bootstrap.
        save_maps: Also save every map (npz shards, by id) in the store.
        limit: Use the first ``limit`` items of the split only.
    """

    methods: tuple[MethodSpec, ...]
    metrics: tuple[str, ...] = ("deletion", "insertion", "positive", "negative", "pointing", "energy", "auroc")
    targets: str = "all_present"
    split: str = "all"
    dev_every: int = 5
    score: str = "prob"
    perturbation_score: str | None = None
    curve_steps: int | None = None
    reference: str | None = None
    chunk: int = 16
    batch_size: int = 256
    seed: int = 0
    save_maps: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        methods = tuple(MethodSpec(m) if isinstance(m, str) else
                        (MethodSpec(**m) if isinstance(m, dict) else m) for m in self.methods)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "metrics", tuple(self.metrics))

    # ----------------------------------------------------------------------------- checks and hash
    def validate(self) -> Plan:
        """Raises `PlanError` with one line for anything that cannot run; returns the plan."""
        from caap_lens.baselines import METHODS
        from caap_lens.evaluation.metrics import METRICS

        if not self.methods:
            raise PlanError("the plan has no methods")
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"duplicate method row names {dup}")
        for m in self.methods:
            if m.fn_name not in METHODS and m.fn_name not in PSEUDO_METHODS:
                raise PlanError(f"unknown method {m.fn_name!r}; choose from {', '.join([*METHODS, *PSEUDO_METHODS])}")
        unknown = [k for k in self.metrics if k not in METRICS]
        if unknown:
            raise PlanError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        if not self.metrics:
            raise PlanError("the plan has no metrics")
        import caap_lens.metrics as published

        for k in self.metrics:
            if METRICS[k].needs in ("removal", "others") and not hasattr(published, k):
                raise PlanError(f"metric {k!r} needs caap_lens.metrics.{k}, which this version lacks")
        if self.targets not in TARGET_POLICIES:
            raise PlanError(f"unknown targets policy {self.targets!r}; choose from {', '.join(TARGET_POLICIES)}")
        if self.split not in SPLITS:
            raise PlanError(f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}")
        if self.reference is not None and self.reference not in names:
            raise PlanError(f"reference {self.reference!r} is not a method row ({', '.join(names)})")
        for key in ("chunk", "batch_size", "dev_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"{key} must be a positive int, got {v!r}")
        if self.curve_steps is not None and (not isinstance(self.curve_steps, int) or self.curve_steps < 1):
            raise PlanError(f"curve_steps must be a positive int or None, got {self.curve_steps!r}")
        from caap_lens.attribution.scores import resolve_score

        for s in (self.score, self.perturbation_score):
            if s is not None:
                try:
                    resolve_score(s)
                except (ValueError, KeyError, TypeError) as err:
                    raise PlanError(f"bad score {s!r}: {err}") from None
        _jsonable([m.options for m in self.methods])
        return self

    @property
    def reference_row(self) -> str:
        return self.reference or self.methods[0].name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        d["metrics"] = list(self.metrics)
        return d

    def hash(self) -> str:
        """sha256 (16 hex digits) of the canonical JSON of everything that defines the numbers."""
        d = self.to_dict()
        d.pop("batch_size")  # a memory knob: it changes no number (whole rows per forward pass)
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan from a dict (the TOML layout of the module docstring). Unknown keys are an error."""
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise PlanError(f"unknown plan key(s) {extra}; known: {', '.join(sorted(known))}")
        rows = []
        for m in data.get("methods", ()):
            if isinstance(m, str):
                rows.append(MethodSpec(m))
            elif isinstance(m, dict):
                bad = sorted(set(m) - {"name", "method", "options"})
                if bad or "name" not in m:
                    raise PlanError(f"a method entry needs 'name' (and optionally 'method', 'options'), got {m}")
                rows.append(MethodSpec(str(m["name"]), m.get("method"), dict(m.get("options", {}))))
            else:
                raise PlanError(f"a method entry must be a name or a table, got {m!r}")
        data["methods"] = tuple(rows)
        if "metrics" in data:
            data["metrics"] = tuple(data["metrics"])
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> Plan:
        """A plan from a TOML file."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise PlanError(f"plan file {path} is not valid TOML: {err}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------------------------- items
    def item_indices(self, n: int) -> list[int]:
        """Indices of the source's items in this plan's split, in order (then ``limit``)."""
        if self.split == "all":
            idx = list(range(n))
        elif self.split == "dev":
            idx = [i for i in range(n) if i % self.dev_every == 0]
        else:
            idx = [i for i in range(n) if i % self.dev_every != 0]
        return idx if self.limit is None else idx[: max(0, int(self.limit))]
