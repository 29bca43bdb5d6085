"""Where the main job's time goes, on the CPU (issue #35, item 1): ``lens-bias run`` in this process,
each stage timed, and inside each stage the time, the calls and the forward tokens of every measure
``evaluate`` takes (held-out pairs, WikiText-2, LAMBADA, seqgap, CrowS-Pairs, BBQ, generations,
knowledge, KL) and of the rest (attribution, exact ablations, selection, export).

    python benchmarks/bench_run.py OUT.json                      # SmolLM2, the demo's settings
    python benchmarks/bench_run.py OUT.json --model tiny-random --set per_domain=4 --set bbq_rows=20

Forward tokens are the token positions every forward pass of the model reads (padding included),
counted at the token embedding (a global forward pre-hook on ``nn.Embedding``); a generation step
with a KV cache counts its new tokens only. ``--set key=value`` overrides a ``RunConfig`` field
(ints, floats and strings; ``none`` = None). Prints a table and one JSON line; writes the detail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import emit

from lens_bias.measures import evaluation
from lens_bias.pipeline import stages


class Profile:
    """Seconds, calls and forward tokens per (stage, measure); measure ``-`` = outside ``evaluate``."""

    def __init__(self) -> None:
        self.stage, self.measure = "-", "-"
        self.t_measure = 0.0
        self.seconds: dict = defaultdict(float)
        self.calls: dict = defaultdict(int)
        self.tokens: dict = defaultdict(int)
        self.stage_seconds: dict = {}
        self.t_stage = 0.0

    def on_stage(self, name: str, event: str) -> None:
        if event == "start":
            self.stage, self.t_stage = name, time.perf_counter()
        else:
            self.stage_seconds[name] = time.perf_counter() - self.t_stage
            self.stage = "-"

    def on_measure(self, name: str, event: str) -> None:
        if event == "start":
            self.measure, self.t_measure = name, time.perf_counter()
        else:
            key = (self.stage, name)
            self.seconds[key] += time.perf_counter() - self.t_measure
            self.calls[key] += 1
            self.measure = "-"

    def on_embed(self, module, args) -> None:
        if isinstance(module, torch.nn.Embedding) and args and isinstance(args[0], torch.Tensor) \
                and not args[0].is_floating_point():
            self.tokens[(self.stage, self.measure)] += args[0].numel()

    def rows(self) -> list[dict]:
        out = []
        for stage, total in self.stage_seconds.items():
            keys = sorted({k for k in list(self.seconds) + list(self.tokens) if k[0] == stage},
                          key=lambda k: -self.seconds.get(k, 0.0))
            measured = sum(self.seconds.get(k, 0.0) for k in keys)
            out.append({"stage": stage, "measure": "(all)", "seconds": total, "calls": None,
                        "tokens": sum(self.tokens.get(k, 0) for k in keys)})
            for k in keys:
                if k[1] != "-":
                    out.append({"stage": stage, "measure": k[1], "seconds": self.seconds[k],
                                "calls": self.calls[k], "tokens": self.tokens.get(k, 0)})
            out.append({"stage": stage, "measure": "(the rest)", "seconds": total - measured, "calls": None,
                        "tokens": self.tokens.get((stage, "-"), 0)})
        return out


def _value(text: str):
    if text.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    fields = {f.name for f in dataclasses.fields(stages.RunConfig)}
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        if key not in fields:
            ap.error(f"--set {key}: not a RunConfig field ({', '.join(sorted(fields))})")
        overrides[key] = _value(value)
    cfg = stages.RunConfig(model=a.model, progress=False, **overrides)
    prof = Profile()
    stages.STAGE_LISTENERS.append(prof.on_stage)
    evaluation.MEASURE_LISTENERS.append(prof.on_measure)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(prof.on_embed)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stages.run(cfg, Path(tmp) / "run")
    finally:
        handle.remove()
    wall = time.perf_counter() - t0
    rows = prof.rows()
    print(f"{'stage':48s} {'measure':12s} {'seconds':>8s} {'calls':>6s} {'tokens':>10s}")
    for r in rows:
        print(f"{r['stage'][:48]:48s} {r['measure']:12s} {r['seconds']:8.1f} "
              f"{'' if r['calls'] is None else r['calls']:>6} {r['tokens']:10d}")
    print(f"{'wall':48s} {'':12s} {wall:8.1f}")
    record = {"model": a.model, "overrides": overrides, "wall_s": round(wall, 1),
              "rows": [{**r, "seconds": round(r["seconds"], 2)} for r in rows]}
    a.out.write_text(json.dumps(record, indent=1))
    emit({"model": a.model, "wall_s": record["wall_s"],
          "stages": {r["stage"]: round(r["seconds"], 1) for r in rows if r["measure"] == "(all)"}})


if __name__ == "__main__":
    main()
