"""Model(inputs=..., outputs=...): Keras's way of reading the inside of a built model.

The notebook draws what each convolution sees with

    layer_outputs = [layer.output for layer in model.layers]
    activation_model = tinycnn.models.Model(inputs=model.input, outputs=layer_outputs)
    maps = activation_model.predict(image)       # a list: one array per layer

`model.input` and `layer.output` are not data. They are SymbolicTensors: named places in a
built Sequential (its input, or the output of one of its layers), each with the shape the
data will have there, the batch axis None. Keras calls them KerasTensors. A Model made of
them owns no weights: its `predict` runs the Sequential's own layers (their textbook
forward passes, as Sequential.layer_outputs does) from the input to the deepest output
asked for, and hands back the data that passed each output.
"""
import math

import numpy as np

from tinycnn import callbacks as callbacks_module
from tinycnn import checks


class SymbolicTensor:
    """A place in a built Sequential where data will flow: its input, or one layer's output.

    layer: the layer whose output this is; None for the model's input.
    shape: what the data there looks like, batch axis None: (None, 28, 28, 1) for the
        notebook's input, (None, 26, 26, 32) after its Conv2D(32, (3, 3)).
    model: the Sequential this place belongs to.
    """

    def __init__(self, layer, shape, model):
        self.layer = layer
        self.shape = tuple(shape)
        self.model = model

    def __repr__(self):
        where = "input" if self.layer is None else f"output of layer {self.layer.name!r}"
        return f"<SymbolicTensor shape={self.shape}, {where} of model {self.model.name!r}>"


class Model:
    """Keras's Model(inputs, outputs) over one built Sequential.

    inputs: the Sequential's input, `model.input`.
    outputs: one SymbolicTensor (`layer.output`) or a list of them, from the same model.
    predict(x) returns one array per output, in the order given (a single output, or a list
    of one, gives the array itself, as tf.keras did).
    """

    def __init__(self, inputs, outputs, name=None):
        self.input = _the_input(inputs)
        self.source = self.input.model                # the Sequential whose layers predict runs
        if isinstance(outputs, SymbolicTensor):
            self.outputs, self._single = [outputs], True
        else:
            self.outputs = _output_list(outputs)
            self._single = len(self.outputs) == 1     # a list of one gives one array too, as tf.keras did
        # depth of an output = how many layers the data has passed there (0 for the input)
        self._depths = [_depth_of(tensor, index, self.source) for index, tensor in enumerate(self.outputs)]
        self._layers = self.source.layers[:max(self._depths)]     # the layers predict runs
        self.name = name or f"model_of_{self.source.name}"

    @property
    def output(self):
        """The output (or the list of outputs) the Model was made with."""
        return self.outputs[0] if self._single else list(self.outputs)

    def predict(self, x, batch_size=None, verbose="auto"):
        """The data at each output for inputs x (N, *input shape), computed in batches.

        Returns a list of arrays, output i of shape (N, *outputs[i].shape[1:]); for the
        notebook's first CNN and one image (1, 28, 28, 1): (1, 26, 26, 32), (1, 13, 13, 32),
        (1, 5408), (1, 100), (1, 10). A Model with a single output returns that array.
        """
        batch_size = checks.batch_size_of(batch_size, "Model.predict")
        verbose = checks.verbose_level(verbose, "Model.predict")
        x = checks.inputs(self.source, x, "Model.predict")
        results = [np.empty((len(x),) + tensor.shape[1:], dtype=self.source.dtype) for tensor in self.outputs]
        progbar = _progbar(verbose, math.ceil(len(x) / batch_size))
        for step, start in enumerate(range(0, len(x), batch_size)):
            batch = x[start:start + batch_size]
            passed = [batch]                          # passed[d]: the batch after d layers
            for layer in self._layers:
                passed.append(layer.forward(passed[-1], training=False))
            for result, depth in zip(results, self._depths):
                result[start:start + len(batch)] = passed[depth]
            if progbar is not None:
                progbar.update(step + 1)
        if progbar is not None:
            progbar.finish()
        return results[0] if self._single else results

    def __repr__(self):
        return (f"<Model name={self.name!r} of {self.source.name!r}: input {self.input.shape}, "
                f"{len(self.outputs)} output(s)>")


def _progbar(verbose, steps):
    """Keras's progress line for `steps` batches (verbose 1 or 2), or None (verbose 0)."""
    if not verbose:
        return None
    return callbacks_module.Progbar(steps, dynamic=verbose == 1 and callbacks_module.is_interactive())


def _the_input(inputs):
    """The SymbolicTensor a Model starts from: a built Sequential's current `model.input`."""
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]                            # Keras also takes [model.input]
    if not isinstance(inputs, SymbolicTensor):
        raise ValueError(f"Model: inputs must be a built model's input, inputs=model.input; "
                         f"got {_describe(inputs)}")
    if inputs.layer is not None:
        raise ValueError(f"Model: inputs must be a model's input, model.input; {inputs!r} is a layer's "
                         f"output, and a Model here always starts at the input of a Sequential")
    if not inputs.model.built or inputs is not inputs.model.input:
        raise ValueError(f"Model: {inputs!r} is no longer that model's input (its layers were removed "
                         f"and it was built again); take model.input afresh")
    return inputs


def _output_list(outputs):
    """outputs as a non-empty list of SymbolicTensors, each checked to be one."""
    if not isinstance(outputs, (list, tuple)) or not outputs:
        raise ValueError(f"Model: outputs must be a layer's output (layer.output) or a non-empty list "
                         f"of them; got {_describe(outputs)}")
    for index, tensor in enumerate(outputs):
        if not isinstance(tensor, SymbolicTensor):
            raise ValueError(f"Model: outputs[{index}] must be a layer's output (layer.output); "
                             f"got {_describe(tensor)}")
    return list(outputs)


def _depth_of(tensor, index, source):
    """How many of source's layers the data has passed at `tensor`: 0 at the input, i + 1 after
    layer i. Raises ValueError when tensor is not reachable from source's input."""
    if tensor.model is not source:
        raise ValueError(f"Model: outputs[{index}], {tensor!r}, cannot be reached from inputs, the input "
                         f"of model {source.name!r}: take inputs and outputs from the same model")
    layers = source.layers
    if tensor.layer is None:
        if tensor is not source.input:
            raise _no_longer_there(tensor, index, source)
        return 0
    if tensor.layer not in layers or tensor.layer.output is not tensor:
        raise _no_longer_there(tensor, index, source)
    return layers.index(tensor.layer) + 1


def _no_longer_there(tensor, index, source):
    return ValueError(f"Model: outputs[{index}], {tensor!r}, is no longer part of model {source.name!r} "
                     f"(its layer was removed, or the model was built again); take layer.output afresh")


def _describe(value):
    """A short description of a wrong argument, with the likely fix."""
    if hasattr(value, "forward") and hasattr(value, "name"):
        return f"the layer {value.name!r} itself; use its output, layer.output"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {value.shape}; a Model is made of places (model.input, layer.output), not data"
    return repr(value)[:200]
