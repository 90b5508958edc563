"""The reference engine: the textbook training step, in plain NumPy.

One training step on a batch (x, y):

    1. forward:   out = layer.forward(out) for each layer, first to last
    2. loss:      loss, dL/dlogits = loss.from_logits(y, last.logits)
                  (a softmax output: dL/dlogits = (softmax - onehot) / batch, as Keras)
    3. backward:  grad = layer.backward(grad) for each layer, last to first;
                  each leaves dL/dparams in its `grads`
    4. update:    optimizer.apply_gradients(model.grads_and_params()): each trainable
                  param with its gradient (BatchNormalization's moving statistics are
                  weights the optimizer leaves alone)

Every pass here is a layer's own `forward` and `backward` (tinycnn/layers.py), the loss's
(tinycnn/losses.py) and the optimizer's (tinycnn/optimizers.py). This engine is the
definition of what tinycnn computes: the fast engine is tested against it.
"""
import contextlib
import math

from tinycnn.engines import Engine


class ReferenceEngine(Engine):
    """Runs the layers' own passes, one batch at a time, in the calling thread."""
    name = "reference"

    @contextlib.contextmanager
    def run(self, model, batch_size, batches, x, y=None):
        yield                                        # nothing to set up or tear down

    def train_step(self, model, x, y):
        """One step of gradient descent on the batch -> (its mean loss before the step, its outputs).

        When the loss is NaN or infinite the step is not taken, so the weights stay finite.
        """
        layers, last = model.layers, model.layers[-1]
        out = x
        for layer in layers:                                        # 1. forward
            out = layer.forward(out, training=True)
        if last.outputs_softmax:                                    # 2. loss
            loss, grad = model.loss.from_logits(y, last.logits)
        else:
            loss, grad = model.loss.from_probs(y, out)
        if not math.isfinite(loss):                                 # NaN/inf: skip the step, keep the weights
            return loss, out
        # 3. backward: the last layer from the loss's gradient (softmax fused), then the rest, last to first
        grad = last.backward_from_logits(grad) if last.outputs_softmax else last.backward(grad)
        for layer in reversed(layers[:-1]):
            if grad is None:                                        # no layer below has weights:
                break                                               # none needs dL/dx
            grad = layer.backward(grad)
        model.optimizer.apply_gradients(model.grads_and_params())  # 4. update the trainable params
        return loss, out

    def predict_step(self, model, x):
        """The batch's outputs, and the last layer's logits where it is a softmax (else None)."""
        out = x
        for layer in model.layers:
            out = layer.forward(out, training=False)
        last = model.layers[-1]
        return out, (last.logits if last.outputs_softmax else None)
