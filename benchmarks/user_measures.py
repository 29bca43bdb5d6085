"""BBQ (all 800 Black / White race rows) and the generation audit (our 160 prompts and 80 BOLD
prompts) on an unpruned model and, with a mask, before and after it: the numbers of
docs/results.md's "Bias as users see it".

    python benchmarks/user_measures.py OUT.json                                  # SmolLM2, unpruned
    python benchmarks/user_measures.py OUT.json --mask runs/demo                 # and the demo's mask
    python benchmarks/user_measures.py OUT.json --model gemma3-270m

Reads ../shared/data (BBQ and BOLD). About 8 min for SmolLM2 with a mask on a 2-core CPU.
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
from lens_bias.prompts.bbq import load_bbq
from lens_bias.prompts.generation import audit_prompts, default_bold_path


def measure(bridge, rows, prompts) -> tuple:
    t0 = time.time()
    scores = bbq_scores(bridge, rows, batch_size=16)
    t1 = time.time()
    audit = generation_audit(bridge, prompts, batch_size=128)
    return scores, audit, {"bbq_s": round(t1 - t0, 1), "generations_s": round(time.time() - t1, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mask", type=Path, help="a mask (or run folder) to measure after, under zero ablation")
    a = ap.parse_args()
    bridge = load_model(a.model)
    rows, prompts = load_bbq(), audit_prompts(default_bold_path())
    bq, ga, secs = measure(bridge, rows, prompts)
    out = {"model": a.model, "seconds": secs, "bbq": bq.summary(), "generations": ga.summary()}
    if a.mask is not None:
        with ablate(bridge, PruningMask.load(a.mask)):
            bq2, ga2, _ = measure(bridge, rows, prompts)
        out.update({"bbq_after": bq2.summary(), "generations_after": ga2.summary(),
                    "bbq_answers_changed": int((bq.answers != bq2.answers).sum()),
                    "changes": {k: c.to_dict() for k, c in {**bbq_changes(bq, bq2),
                                                            **generation_changes(ga, ga2)}.items()}})
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
