"""Section 6: what the trained CNN learned, and where it goes wrong.

Trains the categorical CNN (or loads one saved by `tinycnn train`), then draws
  - its 32 first-layer filters (3x3 weights: edge and blob detectors),
  - the confusion matrix on the test set (shirts, T-shirts, pullovers and coats get mixed up),
    in counts and with each row divided by its total (each class's fractions),
  - a gallery of misclassified test images with their true and predicted classes,
  - the mistakes it was surest of, with their probabilities,
  - one test image's softmax probabilities, one bar per class.

    python examples/06_filters_confusion_mistakes.py
    python examples/06_filters_confusion_mistakes.py --model-file runs/cnn_categorical/model.npz
    python examples/06_filters_confusion_mistakes.py --quick  # 3,000 images, 2 epochs
"""
import argparse
import os

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential, load_model
from tinycnn.optimizers import SGD
from tinycnn.utils import set_random_seed

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/06_filters_confusion_mistakes", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 2 epochs")
parser.add_argument("--model-file", help="use this saved cnn_categorical model instead of training")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 2) if args.quick else (None, 5)

train_images, train_labels, test_images, test_labels = load_dataset(one_hot_encode=True, limit=limit)
train_images, test_images = prep_pixels(train_images, test_images)

if args.model_file:
    model = load_model(args.model_file)
else:
    # the notebook's first CNN, as 02_cnn_categorical.py trains it (tinycnn.zoo.cnn_categorical_model())
    set_random_seed(1)
    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(100, activation="relu", kernel_initializer="he_uniform"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_images, train_labels, epochs=epochs, batch_size=32)

# The first layer's filters: kernel (3, 3, 1, 32), one 3x3 picture per filter.
plot.filters(model, save=os.path.join(args.out, "filters.png"))

# Predictions: the softmax gives 10 probabilities per image; the class is the highest one.
probabilities = model.predict(test_images)                 # (N, 10), each row sums to 1
predicted = probabilities.argmax(axis=1)                   # (N,)
true = test_labels.argmax(axis=1)                          # (N,)
print(f"test accuracy {(predicted == true).mean():.4f}")

plot.confusion_matrix(true, predicted, save=os.path.join(args.out, "confusion_matrix.png"))
# Divided by each row's total, the diagonal is the fraction of each class it gets right.
plot.confusion_matrix(true, predicted, normalize=True,
                      save=os.path.join(args.out, "confusion_matrix_normalized.png"))
plot.misclassified(test_images, true, predicted, max_images=16,
                   save=os.path.join(args.out, "misclassified.png"))
# Mistakes made with 99% confidence: a probability is not a guarantee.
plot.most_confident_mistakes(test_images, true, probabilities, max_images=16,
                             save=os.path.join(args.out, "confident_mistakes.png"))
plot.prediction_bars(probabilities[0], image=test_images[0], true_label=true[0],
                     save=os.path.join(args.out, "prediction.png"))

print(f"saved filters.png, confusion_matrix.png, confusion_matrix_normalized.png, misclassified.png, "
      f"confident_mistakes.png and prediction.png in {args.out}")
plot.show()
