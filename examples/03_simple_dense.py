"""Section 3 of the notebook: a fully connected network, no convolution.

Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam, sparse categorical cross-entropy
(integer labels), 5 epochs.

Why the notebook's run scored 0.1055 (chance level for 10 classes): it fed this model the
raw pixels, 0 to 255. With inputs that large, the first layer's outputs are in the hundreds,
the softmax saturates, and Adam's first steps push most ReLUs to zero for good: the network
ends up answering the same class for every image, right one time in ten. Scaling the pixels
to [0, 1] (prep_pixels) fixes it: the same model then reaches about 0.87.
Try it: `python examples/03_simple_dense.py --raw-pixels`.

    python examples/03_simple_dense.py          # under a minute
    python examples/03_simple_dense.py --quick  # 3,000 images, 1 epoch
"""
import argparse
import os

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.utils import set_random_seed
from tinycnn.zoo import simple_dense_model

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/03_simple_dense", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 1 epoch")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--raw-pixels", action="store_true",
                    help="train on 0..255 pixels as the notebook did (to see it fail)")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 1) if args.quick else (None, args.epochs)

# 1. Data: images (N, 28, 28) with no channel axis (Flatten doesn't need one), integer labels.
train_images, train_labels, test_images, test_labels = load_dataset(
    one_hot_encode=False, limit=limit, add_channel_axis=False)
if args.raw_pixels:
    train_images, test_images = train_images.astype("float32"), test_images.astype("float32")
    print("training on RAW pixels 0..255, as the notebook did")
else:
    train_images, test_images = prep_pixels(train_images, test_images)

# 2. The model. It has no input_shape: it is built the first time it sees data.
set_random_seed(1)
model = simple_dense_model()

# 3. Train and evaluate.
history = model.fit(train_images, train_labels, epochs=epochs, batch_size=32,
                    validation_data=(test_images, test_labels))
model.summary()                       # now that it is built: 101,770 parameters
test_loss, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)
print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}  "
      f"(Keras on normalized pixels: about 0.87; the notebook on raw pixels: 0.1055)")

plot.learning_curves(history, save=os.path.join(args.out, "learning_curves.png"))
print(f"saved learning_curves.png in {args.out}")
plot.show()
