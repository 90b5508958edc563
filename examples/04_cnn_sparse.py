"""Section 4 of the notebook: a deeper CNN with integer labels.

Conv2D(64, 3x3, relu) -> MaxPooling2D(2) -> Conv2D(64, 3x3, relu) -> MaxPooling2D(2)
-> Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam, sparse categorical cross-entropy,
5 epochs. The notebook reached 0.9081 test accuracy with its 243,786 parameters.

    python examples/04_cnn_sparse.py          # a few minutes on 2 cores
    python examples/04_cnn_sparse.py --quick  # 3,000 images, 2 epochs
"""
import argparse
import os

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.datasets import CLASS_NAMES
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.utils import set_random_seed

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/04_cnn_sparse", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 2 epochs")
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 2) if args.quick else (None, args.epochs)     # 2 epochs: curves are lines

# 1. Data: images (N, 28, 28, 1) in [0, 1]; labels stay integers 0..9 (sparse).
train_images, train_labels, test_images, test_labels = load_dataset(one_hot_encode=False, limit=limit)
train_images, test_images = prep_pixels(train_images, test_images)

# 2. The model as the notebook defines it, with Adam and integer labels
#    (tinycnn.zoo.cnn_sparse_categorical_model() returns the same one), and its summary.
set_random_seed(1)
model = Sequential([
    Conv2D(64, (3, 3), activation="relu", input_shape=(28, 28, 1)),
    MaxPooling2D(2, 2),
    Conv2D(64, (3, 3), activation="relu"),
    MaxPooling2D(2, 2),
    Flatten(),
    Dense(128, activation="relu"),
    Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()                       # 243,786 parameters

# 3. Train and evaluate.
history = model.fit(train_images, train_labels, epochs=epochs, batch_size=32,
                    validation_data=(test_images, test_labels))
test_loss, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)
print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}  (notebook: 0.9081)")
plot.learning_curves(history, save=os.path.join(args.out, "learning_curves.png"))

# 4. The notebook's 3x4 grid: for test images 0, 7 and 26 (rows), filter index 1 (the
#    second filter, counting from 0) of each of the four feature-map layers (columns:
#    conv 26x26, pool 13x13, conv 11x11, pool 5x5).
#    Deeper layers keep less of where things are and more of what is there.
rows = [0, 7, 26]
labels = [f"test {i}: {CLASS_NAMES[test_labels[i]]}" for i in rows]
plot.activation_grid(model, test_images[rows], filter_index=1, row_labels=labels,
                     save=os.path.join(args.out, "activations.png"))

print(f"saved learning_curves.png and activations.png in {args.out}")
plot.show()
