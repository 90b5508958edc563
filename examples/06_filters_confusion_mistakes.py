"""Section 6: what the trained CNN learned, and where it goes wrong.

Trains the categorical CNN (or loads one saved by `tinycnn train`), then draws
  - its 32 first-layer filters (3x3 weights: edge and blob detectors),
  - the confusion matrix on the test set (shirts, T-shirts, pullovers and coats get mixed up),
  - a gallery of misclassified test images with their true and predicted classes.

    python examples/06_filters_confusion_mistakes.py
    python examples/06_filters_confusion_mistakes.py --model-file runs/cnn_categorical/model.npz
    python examples/06_filters_confusion_mistakes.py --quick
"""
import argparse
import os

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.models import load_model
from tinycnn.utils import set_random_seed
from tinycnn.zoo import cnn_categorical_model

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/06_filters_confusion_mistakes", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 1 epoch")
parser.add_argument("--model-file", help="use this saved cnn_categorical model instead of training")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 1) if args.quick else (None, 5)

train_images, train_labels, test_images, test_labels = load_dataset(one_hot_encode=True, limit=limit)
train_images, test_images = prep_pixels(train_images, test_images)

if args.model_file:
    model = load_model(args.model_file)
else:
    set_random_seed(1)
    model = cnn_categorical_model()
    model.fit(train_images, train_labels, epochs=epochs, batch_size=32)

# The first layer's filters: kernel (3, 3, 1, 32), one 3x3 picture per filter.
plot.filters(model, save=os.path.join(args.out, "filters.png"))

# Predictions: the class with the highest probability.
predicted = model.predict(test_images).argmax(axis=1)      # (N,)
true = test_labels.argmax(axis=1)                          # (N,)
print(f"test accuracy {(predicted == true).mean():.4f}")

plot.confusion_matrix(true, predicted, save=os.path.join(args.out, "confusion_matrix.png"))
plot.misclassified(test_images, true, predicted, max_images=16,
                   save=os.path.join(args.out, "misclassified.png"))

print(f"saved filters.png, confusion_matrix.png and misclassified.png in {args.out}")
plot.show()
