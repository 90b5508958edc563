"""Default threads against one thread, on an idle machine and beside one CPU-bound program.

    python3 benchmarks/busy.py                          # cnn_categorical, 3 repeats
    python3 benchmarks/busy.py --model bn_dropout_cnn --repeats 2

The fast engine splits each batch into two halves on two cores. When another program holds
one of the cores, the second half starts late and the step waits for it; the engine then
backs off to one thread for a while (tinycnn/engines/fast/parallel.py, `Backoff`). Before
trying halves at all it reads whether a second core is idle while it runs one thread, and
where halves are slower even on an idle machine, its timed trials keep whole batches
(`HalvesTrial`). This measures whether that works: the default must never be slower than
TINYCNN_NUM_THREADS=1.

For each repeat and each condition (idle, busy), the two settings run one after the other,
their order flipping from repeat to repeat, each in a process of its own
(benchmarks/_sides.py: real data, batch 32, --epochs epochs of --train-samples images; the
first epoch is the warm-up and is dropped). "busy" starts one CPU-bound program (a Python
loop that never sleeps) before the run and stops it after. Reports the median ms per step
of each, their ratio default / one thread, how many times the engine backed off, and what
its last trial of halves against whole batches kept after how many trials, and how many
times it sensed no idle core and so kept whole batches untried.
Writes DIR/busy.json and DIR/busy.md (DIR: benchmarks/results/, git-ignored).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _machine  # noqa: E402

SETTINGS = {"default": {}, "one thread": {"TINYCNN_NUM_THREADS": "1"}}


def start_hog():
    """One CPU-bound program: a Python loop that never sleeps."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(model, setting, args):
    """ms per step of the epochs after the first, and the engine's back-off count."""
    env = dict(os.environ, **SETTINGS[setting])
    env.pop("OPENBLAS_CORETYPE", None)      # as vs_keras.py: the machine's OpenBLAS guard off
    env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [sys.executable, os.path.join(HERE, "_sides.py"), "--side", "tinycnn", "--model", model,
           "--epochs", str(args.epochs), "--train-samples", str(args.train_samples),
           "--predict-repeats", "0", "--batch-size", "32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model} {setting} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = -(-args.train_samples // 32)
    ms = [1000 * t / steps for t in res["epoch_s"][1:]]
    trials = res["settings"].get("halves_trials") or {}
    verdicts = " ".join(f"{'halves' if pay else 'whole'} after {n} (busy sensed {busy}x)"
                        for n, pay, busy in trials.values()) or "none"
    return statistics.median(ms), f"{res['settings'].get('halves_backoffs')} back-offs, trials: {verdicts}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn_categorical")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is dropped")
    p.add_argument("--train-samples", type=int, default=9600, help="images per epoch")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    machine = _machine.machine_record(matmul=True)
    print("\n".join(_machine.describe(machine)), flush=True)
    results = {(c, s): [] for c in ("idle", "busy") for s in SETTINGS}
    notes = {(c, s): [] for c in ("idle", "busy") for s in SETTINGS}
    for rep in range(args.repeats):
        for condition in ("idle", "busy"):
            order = list(SETTINGS) if rep % 2 == 0 else list(SETTINGS)[::-1]
            hog = start_hog() if condition == "busy" else None
            try:
                for setting in order:
                    ms, note = run(args.model, setting, args)
                    results[condition, setting].append(ms)
                    notes[condition, setting].append(note)
                    print(f"  repeat {rep + 1} {condition:4s} {setting:10s} {ms:7.2f} ms/step  {note}",
                          flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    lines = [f"{args.model}, batch 32, {args.epochs - 1} timed epochs of {args.train_samples} images, "
             f"{args.repeats} repeats", "", *_machine.describe(machine), "",
             "| condition | default ms/step | one thread ms/step | default / one thread | halves' back-offs and timed trials (default) |",
             "|---|---|---|---|---|"]
    summary = {}
    for condition in ("idle", "busy"):
        d = statistics.median(results[condition, "default"])
        o = statistics.median(results[condition, "one thread"])
        summary[condition] = {"default_ms": d, "one_thread_ms": o, "ratio": d / o,
                              "default_all": results[condition, "default"],
                              "one_thread_all": results[condition, "one thread"],
                              "halves": notes[condition, "default"]}
        lines.append(f"| {condition} | {d:.2f} {[round(x, 2) for x in results[condition, 'default']]} | "
                     f"{o:.2f} {[round(x, 2) for x in results[condition, 'one thread']]} | **{d / o:.2f}** | "
                     f"{'; '.join(notes[condition, 'default'])} |")
    md = "\n".join(lines)
    print("\n" + md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "busy.json"), "w") as f:
        json.dump({"machine": machine, "args": vars(args), "summary": summary}, f, indent=1)
    with open(os.path.join(args.out, "busy.md"), "w") as f:
        f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
