"""Test-time scaling on ShapesEval: score vs N candidates (1, 2, 4, 8, 16) for each judge, the
judges' top-pick accuracy against the base rate, plotted to <out>/scaling.png beside scaling.json.

    python eval/test_time_scaling.py --model MODEL_DIR --out OUT [--ns 1,2,4,8,16] [--images-per-prompt 1]

Same arguments as `unimodal eval scaling`; `--help` lists them.
"""
import sys

from unimodal.commands.eval import script_main

if __name__ == "__main__":
    sys.exit(script_main("scaling"))
