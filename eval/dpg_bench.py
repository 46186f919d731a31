"""DPG-Bench generation: every <id>.txt prompt as a 2x2 grid <out>/<id>.png (see eval/README.md).

    python eval/dpg_bench.py --prompts dpg_bench/prompts --model MODEL_DIR --out OUT [--tile-size 512]

Same arguments as `unimodal eval dpg`; `--help` lists them.
"""
import sys

from unimodal.commands.eval import script_main

if __name__ == "__main__":
    sys.exit(script_main("dpg"))
