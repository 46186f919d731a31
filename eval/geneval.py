"""GenEval generation: every prompt of a metadata file in GenEval's layout (see eval/README.md).

    python eval/geneval.py --metadata evaluation_metadata.jsonl --model MODEL_DIR --out OUT [--n 32]

Same arguments as `unimodal eval geneval`; `--help` lists them.
"""
import sys

from unimodal.commands.eval import script_main

if __name__ == "__main__":
    sys.exit(script_main("geneval"))
