"""Section 2 of the notebook: a small CNN with one-hot labels.

Conv2D(32, 3x3, relu) -> MaxPooling2D(2) -> Flatten -> Dense(100, relu) -> Dense(10, softmax),
trained with SGD (learning rate 0.01, momentum 0.9) on categorical cross-entropy for 5 epochs.
The notebook reached 0.9043 test accuracy.

    python examples/02_cnn_categorical.py          # about a minute on 2 cores
    python examples/02_cnn_categorical.py --quick  # 3,000 images, 2 epochs
"""
import argparse
import os

from tinycnn import plot
from tinycnn.callbacks import GradientNorms
from tinycnn.data import load_dataset, prep_pixels
from tinycnn.datasets import CLASS_NAMES
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.optimizers import SGD
from tinycnn.utils import set_random_seed

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="out/02_cnn_categorical", help="folder for the pictures")
parser.add_argument("--quick", action="store_true", help="3,000 images and 2 epochs")
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
limit, epochs = (3000, 2) if args.quick else (None, args.epochs)     # 2 epochs: curves are lines

# 1. Data: images (N, 28, 28, 1) scaled to [0, 1]; labels one-hot (N, 10),
#    because categorical cross-entropy compares two probability rows.
train_images, train_labels, test_images, test_labels = load_dataset(one_hot_encode=True, limit=limit)
train_images, test_images = prep_pixels(train_images, test_images)
print("train:", train_images.shape, train_labels.shape, " test:", test_images.shape)

# 2. The model as the notebook defines it, compiled with SGD(0.01, momentum=0.9) and
#    "accuracy" (tinycnn.zoo.cnn_categorical_model() returns the same one).
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
model.summary()                       # 542,230 parameters

# 3. Train. The test set is also scored after each epoch, for the learning curves;
#    GradientNorms records how big each layer's gradient is after every batch.
gradient_norms = GradientNorms()
history = model.fit(train_images, train_labels, epochs=epochs, batch_size=32,
                    validation_data=(test_images, test_labels), callbacks=[gradient_norms])

# 4. Evaluate on images the model has never trained on.
test_loss, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)
print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}  (notebook: 0.9043)")

plot.learning_curves(history, save=os.path.join(args.out, "learning_curves.png"))
plot.gradient_norms(gradient_norms, save=os.path.join(args.out, "gradient_norms.png"))

# 5. How the convolution computes its 26x26 outputs: im2col cuts the image into 3x3 patches,
#    one row each, so that the layer is one matrix product (patches @ kernel).
plot.im2col_picture(save=os.path.join(args.out, "im2col.png"))

# 6. All 32 feature maps of the convolution for test image 0: one per filter.
plot.feature_maps(model, test_images[0], save=os.path.join(args.out, "feature_maps.png"))

# 7. What the two feature-map layers see: filter index 1 (the second filter, counting from 0)
#    of the convolution (26x26) and of the pooling (13x13), for test images 0, 7 and 26
#    (an ankle boot and two shirts).
rows = [0, 7, 26]
labels = [f"test {i}: {CLASS_NAMES[test_labels[i].argmax()]}" for i in rows]
plot.activation_grid(model, test_images[rows], filter_index=1, row_labels=labels,
                     save=os.path.join(args.out, "activations.png"))

print(f"saved learning_curves.png, gradient_norms.png, im2col.png, feature_maps.png and "
      f"activations.png in {args.out}")
plot.show()
