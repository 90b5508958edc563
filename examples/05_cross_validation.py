"""Section 5: 5-fold cross-validation of the categorical CNN (the machinelearningmastery tutorial).

The 60,000 training images are shuffled once (KFold(5, shuffle=True, random_state=1)) and cut
into 5 folds of 12,000. Each fold in turn is held out: a fresh model trains on the other
48,000 for 10 epochs (batch 32) and is scored on it. The tutorial reports
91.200 / 91.217 / 90.958 / 91.242 / 91.317, mean 91.19, std 0.12.

    python examples/05_cross_validation.py --jobs 2   # 5 x 10 epochs: the longest example
    python examples/05_cross_validation.py --quick    # 2,000 images, 2 epochs per fold
"""
import argparse
import os

import numpy as np

from tinycnn import plot
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.model_selection import cross_validate
from tinycnn.models import Sequential
from tinycnn.optimizers import SGD
from tinycnn.zoo import cnn_categorical_model

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/05_cross_validation", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="2,000 images and 2 epochs per fold")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--jobs", type=int, default=1, help="folds trained at once (processes)")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (2000, 2) if args.quick else (None, args.epochs)     # 2 epochs: curves are lines

# 1. Data: only the training set; every fold's held-out part plays the test set.
train_images, train_labels, _, _ = load_dataset(one_hot_encode=True, limit=limit)
train_images = prep_pixels(train_images)


# 2. The tutorial's define_model: a fresh, compiled model each time it is called.
def define_model():
    model = Sequential()
    model.add(Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform",
                     input_shape=(28, 28, 1)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(100, activation="relu", kernel_initializer="he_uniform"))
    model.add(Dense(10, activation="softmax"))
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# Folds trained side by side (--jobs 2) run in worker processes, which import the model's
# function by its module and name. A function defined in this script cannot be imported
# there, so they use tinycnn.zoo.cnn_categorical_model, the same model. With --jobs 1 the
# folds train here, one after the other, on this process's threads: their scores differ
# from the workers' only through float32 rounding.
model_fn = define_model if args.jobs == 1 else cnn_categorical_model

# 3. Evaluate the model: one fresh model per fold, "> 91.200" printed per fold.
scores, histories = cross_validate(model_fn, train_images, train_labels,
                                   n_splits=5, epochs=epochs, batch_size=32, random_state=1,
                                   n_jobs=args.jobs)

# 4. Learning curves (summarize_diagnostics): training in blue, held-out fold in orange.
plot.learning_curves(histories, save=os.path.join(args.out, "learning_curves.png"))

# 5. Scores (summarize_performance): mean, standard deviation and a box plot.
print("Accuracy: mean=%.3f std=%.3f, n=%d" % (np.mean(scores) * 100, np.std(scores) * 100,
                                              len(scores)))
plot.performance(scores, save=os.path.join(args.out, "performance.png"))

print(f"saved learning_curves.png and performance.png in {args.out}")
plot.show()
