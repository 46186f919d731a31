"""ShapesEval: generate for the Shapes world's prompts, score with the analytic scorer, print and
save GenEval-shaped summaries for plain sampling and for self-verified best-of-N.

    python eval/shapes_eval.py --model MODEL_DIR --out OUT [--n 16] [--split held_out]

Same arguments as `unimodal eval shapes`; `--help` lists them.
"""
import sys

from unimodal.commands.eval import script_main

if __name__ == "__main__":
    sys.exit(script_main("shapes"))
