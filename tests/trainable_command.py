"""A standalone training command for the tests: knows nothing of telescope or Ray.

    python tests/trainable_command.py --lr X --init-std X --width N --base-width N --seed N --out DIR
                                      [--faults true] [--sleep S]

Writes its curve to DIR/curve.jsonl as it goes and its result to DIR/result.json. With
--faults true, the grid's corners and one edge misbehave, one way each (see FAULTS).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

STEPS = 5


def loss(lr, init_std, width, base_width, seed):  # tests/trainable_helpers.py's synthetic_loss
    lr_opt = 0.01 * (width / base_width) ** -0.1
    bowl = math.log(lr / lr_opt) ** 2 + 0.5 * math.log(init_std / 0.02) ** 2
    return 2.0 + bowl + 0.001 * math.sin(12.9898 * seed + width)


def fault(lr, init_std):
    """Which way this point misbehaves under --faults true (None: it trains)."""
    lo_lr, hi_lr = lr < 0.004, lr > 0.02
    lo_init, hi_init = init_std < 0.015, init_std > 0.03
    return {(True, False, True, False): "exit", (True, False, False, True): "no-result",
            (False, True, True, False): "bad-json", (False, True, False, True): "hang",
            (False, True, False, False): "diverge"}.get((lo_lr, hi_lr, lo_init, hi_init))


def main():
    p = argparse.ArgumentParser()
    for name in ("--lr", "--init-std", "--sleep"):
        p.add_argument(name, type=float, default=0.0)
    for name in ("--width", "--base-width", "--seed"):
        p.add_argument(name, type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--faults", default="false")
    a = p.parse_args()
    what = fault(a.lr, a.init_std) if a.faults == "true" else None
    final = loss(a.lr, a.init_std, a.width, a.base_width, a.seed)
    if what == "exit":
        print("loading shard 3 of 8", file=sys.stderr)
        print("synthetic failure: shard 3 is corrupt", file=sys.stderr)
        sys.exit(3)
    if what == "hang":  # and a grandchild, which must die with it
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", a.out])
        time.sleep(600)
    with open(os.path.join(a.out, "curve.jsonl"), "a") as curve:
        for step in range(1, STEPS + 1):
            train = 10.0 * 4**step if what == "diverge" else final + 0.5**step
            curve.write(json.dumps({"step": step, "train_loss": train}) + "\n")
            curve.flush()
            time.sleep(a.sleep / STEPS)
        if what == "diverge":
            time.sleep(600)  # telescope reads the curve and stops it
        curve.write(json.dumps({"step": STEPS, "val_loss": final}) + "\n")
    if what == "no-result":
        return
    with open(os.path.join(a.out, "result.json"), "w") as f:
        f.write("{final_loss: oops" if what == "bad-json" else json.dumps({"final_loss": final, "tokens": STEPS * 64}))


if __name__ == "__main__":
    main()
