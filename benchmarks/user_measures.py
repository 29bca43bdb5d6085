"""BBQ (all 800 Black / White race rows), the generation audit (our 160 prompts and 80 BOLD
prompts) and the knowledge probe (126 facts) on an unpruned model and, with a mask, before and after
it and beside a random mask of the same size: the numbers of docs/results.md's "Bias as users see
it".

    python benchmarks/user_measures.py OUT.json                                  # SmolLM2, unpruned
    python benchmarks/user_measures.py OUT.json --mask runs/demo                 # and the demo's mask
    python benchmarks/user_measures.py OUT.json --mask runs/demo --random        # and a random mask
    python benchmarks/user_measures.py OUT.json --model gemma3-270m
    python benchmarks/user_measures.py OUT.json --measures knowledge             # one measure

Reads ../shared/data (BBQ and BOLD). About 8 min for SmolLM2 with a mask on a 2-core CPU (the
knowledge probe alone: seconds).
"""

import argparse
import json
import time
from pathlib import Path

from lens_bias import load_model
from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.measures.bbq import bbq_changes, bbq_scores
from lens_bias.measures.generations import generation_audit, generation_changes
from lens_bias.measures.knowledge import knowledge_changes, knowledge_scores
from lens_bias.prompts.bbq import load_bbq
from lens_bias.prompts.generation import audit_prompts, default_bold_path
from lens_bias.prompts.knowledge import load_knowledge
from lens_bias.selection.topk import random_mask

LOADERS = {"bbq": load_bbq, "generations": lambda: audit_prompts(default_bold_path()),
           "knowledge": load_knowledge}
SCORERS = {"bbq": lambda b, x: bbq_scores(b, x, batch_size=16),
           "generations": lambda b, x: generation_audit(b, x, batch_size=128),
           "knowledge": lambda b, x: knowledge_scores(b, x)}
CHANGES = {"bbq": bbq_changes, "generations": generation_changes, "knowledge": knowledge_changes}


def measure(bridge, inputs: dict) -> tuple[dict, dict]:
    """Each measure's scores and its seconds."""
    out, secs = {}, {}
    for name, x in inputs.items():
        t0 = time.time()
        out[name] = SCORERS[name](bridge, x)
        secs[f"{name}_s"] = round(time.time() - t0, 1)
    return out, secs


def changes(before: dict, after: dict) -> dict:
    return {k: c.to_dict() for name in before for k, c in CHANGES[name](before[name], after[name]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mask", type=Path, help="a mask (or run folder) to measure after, under zero ablation")
    ap.add_argument("--random", action="store_true", help="also a random mask of the mask's size (seed 0)")
    ap.add_argument("--measures", default="bbq,generations,knowledge")
    a = ap.parse_args()
    bridge = load_model(a.model)
    inputs = {m: LOADERS[m]() for m in a.measures.split(",")}
    before, secs = measure(bridge, inputs)
    out = {"model": a.model, "seconds": secs, **{m: s.summary() for m, s in before.items()}}
    if a.mask is not None:
        mask = PruningMask.load(a.mask)
        masks = {"after": mask}
        if a.random:
            c = mask.counts()
            kind = "neurons" if c["neurons"] else "heads"
            masks["random"] = random_mask(bridge, str(c[kind]), kind, seed=0)
        for label, m in masks.items():
            with ablate(bridge, m):
                after, _ = measure(bridge, inputs)
            out[label] = {name: s.summary() for name, s in after.items()}
            out[f"changes_{label}"] = changes(before, after)
            if "bbq" in after:
                out[label]["bbq_answers_changed"] = int((before["bbq"].answers != after["bbq"].answers).sum())
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
