"""Section 3 of the notebook: a fully connected network, no convolution.

Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam, sparse categorical cross-entropy
(integer labels), 5 epochs.

What the notebook's 0.1055 says: it is chance level for 10 classes, the score of a network
that answers (almost) the same class for every image. The notebook got it by feeding this
model the raw pixels, 0 to 255. Inputs that large make the first layer's sums hundreds of
times too big: the logits are huge, the softmax saturates at 0 or 1, the gradients are huge
and erratic, and depending on the random start a run can collapse onto one class.
In tinycnn the raw-pixel run did not collapse (seeds 1, 2, 3: 0.797, 0.808, 0.809 after 5
epochs) but stays well below the same model on pixels scaled to [0, 1] (prep_pixels):
0.876 (seed 1), as Keras's 0.870. Scale your inputs.
Try it: `python examples/03_simple_dense.py --raw-pixels`.

    python examples/03_simple_dense.py          # under a minute
    python examples/03_simple_dense.py --quick  # 3,000 images, 2 epochs
"""
import argparse
import os

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.layers import Dense, Flatten
from tinycnn.models import Sequential
from tinycnn.utils import set_random_seed

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/03_simple_dense", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 2 epochs")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--raw-pixels", action="store_true",
                    help="train on 0..255 pixels as the notebook did (to see it fail)")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 2) if args.quick else (None, args.epochs)     # 2 epochs: curves are lines

# 1. Data: images (N, 28, 28) with no channel axis (Flatten doesn't need one), integer labels.
train_images, train_labels, test_images, test_labels = load_dataset(
    one_hot_encode=False, limit=limit, add_channel_axis=False)
if args.raw_pixels:
    train_images, test_images = train_images.astype("float32"), test_images.astype("float32")
    print("training on RAW pixels 0..255, as the notebook did")
else:
    # 0..255 -> 0.0..1.0: without this the notebook scored 0.1055 (see the docstring)
    train_images, test_images = prep_pixels(train_images, test_images)

# 2. The model as the notebook defines it, with Adam and integer labels
#    (tinycnn.zoo.simple_dense_model() returns the same one). Its Flatten has no input_shape,
#    so it is built here, on the shape of one image, to print its summary before training.
set_random_seed(1)
model = Sequential([
    Flatten(),
    Dense(128, activation="relu"),
    Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.build((None, 28, 28))
model.summary()                       # 101,770 parameters: 784 x 128 + 128, then 128 x 10 + 10

# 3. Train and evaluate.
history = model.fit(train_images, train_labels, epochs=epochs, batch_size=32,
                    validation_data=(test_images, test_labels))
test_loss, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)
print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}  "
      f"(Keras on normalized pixels: about 0.87; the notebook on raw pixels: 0.1055)")

plot.learning_curves(history, save=os.path.join(args.out, "learning_curves.png"))
print(f"saved learning_curves.png in {args.out}")
plot.show()
