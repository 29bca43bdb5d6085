"""Task configs for lm-evaluation-harness (``lm_eval``) that read the same local files and rows as
lens_bias, so that an exported model (``runs/NAME/model``) can be judged in the field's standard
harness with no model or dataset hub:

* ``lens_bias_crows_black`` and ``lens_bias_crows_race_color``: CrowS-Pairs' race-color rows (all
  516, and the 282 that name a Black group), scored as lm-evaluation-harness's own CrowS-Pairs
  tasks score them (``pct_stereotype``: ``sent_more`` likelier, in [0, 1]; ``likelihood_diff``),
  which is how ``lens-bias measure --crows`` scores them;
* ``lens_bias_bbq_race``: BBQ's 800 race rows with a Black and a White person, each option scored
  by log-likelihood after ``"{context} {question}\\nAnswer:"``; ``acc_ambig``, ``acc_disambig``,
  ``s_dis`` and ``s_amb`` as :mod:`lens_bias.measures.bbq` defines them (in %);
* ``lens_bias_knowledge``: the knowledge probe (``logprob``: the answer's log-probability;
  ``top1``: greedy decoding writes the answer).

The data files are found as lens_bias finds them (``../shared/data`` next to the checkout or the
working directory), or given with ``--metadata '{"crows_file": ..., "bbq_file": ...}'``. Run::

    lm_eval --model hf --model_args pretrained=runs/demo/model \\
        --include_path "$(python -m lens_bias.harness)" \\
        --tasks lens_bias_crows_black,lens_bias_bbq_race,lens_bias_knowledge

Differences to ``lens-bias`` that can move a few rows: lm-evaluation-harness conditions a context
(BBQ, the knowledge probe) without a BOS token for most models and tokenizes a context and its
continuation together; lens_bias puts the BOS token first and tokenizes them apart. CrowS-Pairs has
no context and is scored alike.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
