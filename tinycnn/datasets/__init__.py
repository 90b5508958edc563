"""Datasets: Fashion-MNIST, found, downloaded and verified (numpy and the standard library only).

    >>> from tinycnn.datasets import load_fashion_mnist, CLASS_NAMES
    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()

`tinycnn.datasets.fashion_mnist.load_data` is the same function, by Keras's name.
`data_info()` and `describe_data()` say where the data is and whether it verified.
"""
from tinycnn.datasets import fashion_mnist
from tinycnn.datasets.fashion_mnist import (
    CLASS_NAMES, DatasetError, data_info, describe_data, load_data,
)

load_fashion_mnist = load_data

__all__ = ["fashion_mnist", "CLASS_NAMES", "DatasetError", "data_info", "describe_data",
           "load_data", "load_fashion_mnist"]
