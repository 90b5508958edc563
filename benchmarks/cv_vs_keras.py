"""Keras's own 5-fold cross-validation of the notebook's cnn_categorical, on the same folds
as `tinycnn cv --model cnn_categorical --folds 5 --epochs 10 --seed S` (KFold with shuffle,
random_state=S; fold k seeded S + k), to compare the spread of the two libraries' scores.

    python3 benchmarks/cv_vs_keras.py [SEED]      # needs the bench extra; ~4 min on 2 cores
"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import keras
from tinycnn.data import load_for_model
from tinycnn.model_selection import KFold
(x, y), _ = load_for_model("cnn_categorical")
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
scores = []
t0 = time.time()
for fold, (tr, va) in enumerate(KFold(5, shuffle=True, random_state=seed).split(x)):
    keras.utils.set_random_seed(seed + fold)
    m = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
        keras.layers.Dense(10, activation="softmax")])
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
              loss="categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[tr], y[tr], epochs=10, batch_size=32, verbose=0)
    _, acc = m.evaluate(x[va], y[va], verbose=0)
    scores.append(acc * 100)
    print(f"> {acc*100:.3f}", flush=True)
print(f"Keras: mean={np.mean(scores):.3f} std={np.std(scores):.3f} ({time.time()-t0:.0f} s)")
