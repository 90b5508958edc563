"""Section 7: beyond the notebook. What do batch normalisation, dropout and augmentation each buy?

The zoo's `best` model (tinycnn.zoo.best_model) is the notebook's CNN grown up: two blocks of
two 3x3 convs, BatchNormalization after each conv, Dropout after each block, and augmentation
layers in front (a left-right flip, a shift of up to 3 pixels, a blanked-out rectangle), all
active only in training. This script trains it 8 times, with each of the three additions on
or off, on the same images and seed, and prints an ablation table:

    python examples/07_beyond_the_notebook.py            # 8 variants x 3 epochs on 20,000 images
    python examples/07_beyond_the_notebook.py --quick    # 1,000 images, 2 epochs each
    tinycnn train --model best                           # the full recipe: 30 epochs, all 60,000

What to look for: BatchNormalization makes the first epochs much faster (each layer sees inputs
of mean 0 and variance 1, so a larger learning rate is safe). Dropout and augmentation make
training harder on purpose: training accuracy drops, and the gap between training and test
accuracy (overfitting) shrinks. In a few epochs they may cost test accuracy; over the full
recipe's 30 epochs they are what takes the model past the plain CNN's ~91-92%.

One trap: at inference BatchNormalization uses its MOVING mean and variance, which move only
1% of the way toward each batch's (momentum 0.99, Keras's default). After the --quick run's
16 steps they are still mostly their starting values (0 and 1), so the BN variants score
badly at test time there, while fit's training accuracy (batch statistics) looks fine.
Keras behaves the same; a few hundred steps fix it.
"""
import argparse
import itertools
import os
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt                       # noqa: E402

from tinycnn.data import load_dataset, prep_pixels    # noqa: E402
from tinycnn.utils import set_random_seed             # noqa: E402
from tinycnn.zoo import best_model                    # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/07_beyond_the_notebook", help="folder for the picture")
parser.add_argument("--quick", action="store_true", help="1,000 images and 2 epochs per variant")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--images", type=int, default=20_000, help="training images (the test set is all 10,000)")
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (1000, 2) if args.quick else (args.images, args.epochs)

# 1. Data: one-hot labels, as best_model's loss (cross-entropy with label smoothing) wants.
train_images, train_labels, test_images, test_labels = load_dataset(one_hot_encode=True, limit=limit)
train_images, test_images = prep_pixels(train_images, test_images)
if args.quick:
    test_images, test_labels = test_images[:1000], test_labels[:1000]

# 2. Every combination of the three additions, each trained the same way from the same seed.
rows = []
for batch_norm, dropout, augmentation in itertools.product((False, True), repeat=3):
    set_random_seed(1)
    model = best_model(epochs=epochs, batch_size=args.batch_size, train_images=len(train_images),
                       batch_norm=batch_norm, dropout=dropout, augmentation=augmentation)
    start = time.perf_counter()
    history = model.fit(train_images, train_labels, epochs=epochs, batch_size=args.batch_size, verbose=0)
    seconds = time.perf_counter() - start
    # Training accuracy as fit reports it is measured with dropout and augmentation ON; the
    # clean training accuracy (evaluate: inference mode) is the fair one to compare with test.
    _, train_accuracy = model.evaluate(train_images, train_labels, verbose=0)
    _, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)
    rows.append(dict(bn=batch_norm, dropout=dropout, augmentation=augmentation, params=model.count_params(),
                     fit_accuracy=history.history["accuracy"][-1], train_accuracy=train_accuracy,
                     test_accuracy=test_accuracy, seconds_per_epoch=seconds / epochs))
    print(f"BN {'on ' if batch_norm else 'off'}  dropout {'on ' if dropout else 'off'}  "
          f"augmentation {'on ' if augmentation else 'off'}:  test accuracy {test_accuracy:.4f}", flush=True)

steps = epochs * -(-len(train_images) // args.batch_size)
if steps < 300:
    print(f"\nnote: {steps} steps are too few for BatchNormalization's moving statistics "
          f"(momentum 0.99); see this script's docstring")

# 3. The ablation table (Markdown, so it can be pasted into notes).
print(f"\n{len(train_images)} training images, {epochs} epochs, batch {args.batch_size}; "
      f"test on {len(test_images)} images\n")
print("| BN | dropout | augmentation | params | fit acc | train acc | test acc | gap | s/epoch |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    on = lambda flag: "on" if flag else "-"       # noqa: E731
    print(f"| {on(r['bn'])} | {on(r['dropout'])} | {on(r['augmentation'])} | {r['params']:,} | "
          f"{r['fit_accuracy']:.4f} | {r['train_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
          f"{r['train_accuracy'] - r['test_accuracy']:+.4f} | {r['seconds_per_epoch']:.1f} |")

# 4. The same as a picture: clean training and test accuracy of each variant.
labels = ["+".join(name for name, flag in (("BN", r["bn"]), ("drop", r["dropout"]), ("aug", r["augmentation"]))
                   if flag) or "plain" for r in rows]
fig, ax = plt.subplots(figsize=(9, 4))
positions = range(len(rows))
ax.bar([p - 0.2 for p in positions], [r["train_accuracy"] for r in rows], 0.4, label="train (clean)")
ax.bar([p + 0.2 for p in positions], [r["test_accuracy"] for r in rows], 0.4, label="test")
ax.set_xticks(list(positions), labels, rotation=20)
low = min(min(r["train_accuracy"], r["test_accuracy"]) for r in rows)
ax.set_ylim(max(0.0, low - 0.05), 1.0)
ax.set_ylabel("accuracy")
ax.set_title(f"What each addition buys ({len(train_images)} images, {epochs} epochs)")
ax.legend()
fig.tight_layout()
path = os.path.join(args.out, "ablation.png")
fig.savefig(path, dpi=100)
print(f"\nsaved {path}")
