"""Section 1 of the notebook: look at the data.

Fashion-MNIST: 70,000 grey 28x28 pictures of clothes in 10 classes,
60,000 for training and 10,000 for testing.

    python examples/01_look_at_the_data.py            # pictures go to out/01_look_at_the_data/
    python examples/01_look_at_the_data.py --quick    # the same (this one is quick anyway)
"""
import argparse
import os

import numpy as np

from tinycnn import plot
from tinycnn.datasets import CLASS_NAMES, fashion_mnist

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/01_look_at_the_data", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="accepted for symmetry; nothing to shorten")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)

# Load the four arrays, exactly as keras.datasets.fashion_mnist.load_data() returns them.
(train_images, train_labels), (test_images, test_labels) = fashion_mnist.load_data()

print("train images:", train_images.shape, train_images.dtype)   # (60000, 28, 28) uint8
print("train labels:", train_labels.shape, train_labels.dtype)   # (60000,) uint8
print("test images: ", test_images.shape)                        # (10000, 28, 28)
print("pixel values from", train_images.min(), "to", train_images.max())

# Every class has the same number of pictures: 6,000 for training, 1,000 for testing.
counts = np.bincount(train_labels, minlength=10)
for label, name in enumerate(CLASS_NAMES):
    print(f"  {label} {name:<12} {counts[label]} training images")

# The first nine training images with their class names.
plot.show_images(train_images, train_labels, save=os.path.join(args.out, "images.png"))

# One image up close: a 28x28 grid of numbers from 0 (black) to 255 (white).
first_name = CLASS_NAMES[train_labels[0]]
article = "an" if first_name[0].lower() in "aeiou" else "a"      # "an Ankle boot", "a Shirt"
print(f"\nthe first image ({article} {first_name}), every other pixel:")
print(train_images[0][::2, ::2])

print(f"\nsaved {args.out}/images.png")
plot.show()
