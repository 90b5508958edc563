"""The fast engine: the reference engine's step, computed faster.

    train_step(model, x, y)     forward through the ops (ops.py), the loss from the logits in
                                one numba pass, backward through the ops in reverse, the
                                optimizer's rule through numba kernels
    predict_step(model, x)      forward through the ops, in cache-sized pieces

The ops are the layers' passes with numba kernels, Winograd's convolution and a conv fused
with its pooling (ops.make_plan). On two cores each batch runs in two halves side by side
(parallel.py): the model's layers' gradient arrays take the first half's gradients, a
second plan with gradient arrays of its own the second half's. Each half backpropagates
its share of the batch's MEAN loss, so the two add up to the batch's gradient. The
optimizer's step is then shared too: each core completes the batch's gradient for its part
of every big parameter (parallel.part_of) and applies the rule to that part. A model with
BatchNormalization or random layers (Dropout, augmentation) runs its halves in stretches
that meet at each BatchNormalization, whose statistics are the whole batch's
(`_train_in_synced_halves`).

For a long call (fit, evaluate or predict of MIN_PROCESS_BATCHES batches or more) on Linux,
the second half runs in a forked worker process rather than a thread (no shared GIL). For
that call the weights, gradients and optimizer slots are moved into shared memory
(`_shared_model_arrays`), and moved back into the model's own arrays when it ends.

numba compiles the kernels into machine code the first time they run and caches it on disk;
the first call on a machine with an empty cache says so (`announce_first_compile`), since
it would otherwise sit silent while numba works.
"""
import contextlib
import enum
import math
import os
import sys
import time
import types

import numpy as np

from tinycnn import losses as losses_module
from tinycnn import optimizers as optimizers_module
from tinycnn import utils
from tinycnn.engines import Engine
from tinycnn.engines.fast import denormals, kernels, parallel, tuning
from tinycnn.engines.fast.ops import BatchNormOp, LayerOp, RandomLayerOp, make_plan


COMPILING_MESSAGE = ("tinycnn: compiling the fast engine's kernels for this machine "
                     "(once; about 10-30 s)...")
_first_compile_checked = []                    # one check (and at most one message) per process


def kernel_cache_indexes():
    """The paths of the index files in which numba caches each kernel's machine code: in the
    __pycache__ folder beside kernels.py, or under NUMBA_CACHE_DIR. numba offers no public way
    to ask, so this reads its dispatchers' cache objects; a kernel whose cache cannot be
    located (no cache possible, another numba) is left out."""
    indexes = []
    for kernel in vars(kernels).values():
        cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        index = getattr(cache_file, "_index_path", None)
        if isinstance(index, str):
            indexes.append(index)
    return indexes


def kernel_cache_is_cold():
    """True when numba has cached none of the kernels yet, so that the first batches will
    compile them. False when any is cached, or when the cache cannot be located."""
    indexes = kernel_cache_indexes()
    return bool(indexes) and not any(os.path.exists(index) for index in indexes)


def announce_first_compile():
    """Print COMPILING_MESSAGE (to stderr) once per process, if the kernel cache is cold."""
    if _first_compile_checked:
        return
    _first_compile_checked.append(True)
    if kernel_cache_is_cold():
        print(COMPILING_MESSAGE, file=sys.stderr, flush=True)


class Job(enum.IntEnum):
    """What the worker process runs (its position in the worker's list of jobs)."""
    TRAIN_HALF = 0           # forward and backward of the second half of a batch
    FORWARD_HALF = 1         # the forward pass of the second half (evaluate, predict)
    UPDATE_PART = 2          # part 1 of the optimizer's step


def _same_objects(a, b):
    """True if lists a and b hold the very same objects (is, not ==); False if either is None."""
    return a is not None and b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


@contextlib.contextmanager
def _deferred_dense_rows(plan, deferred, start, stop):
    """While inside: each DenseOp in `deferred` (op index -> (x rows, dL/dz rows) of the batch)
    leaves rows start:stop of those there (DenseOp.deferred_rows); then None again."""
    for i, (x_rows, dz_rows) in deferred.items():
        plan[i].deferred_rows = (x_rows[start:stop], dz_rows[start:stop])
    try:
        yield
    finally:
        for i in deferred:
            plan[i].deferred_rows = None


@contextlib.contextmanager
def _shared_model_arrays(model):
    """While inside: the model's weights, gradients and optimizer slots live in shared memory
    (parallel.shared_copy), so that a forked worker process sees and makes their updates.
    Afterwards the model's own arrays are back in their places, holding the final values, so
    arrays a user holds (layer.kernel, ...) stay the model's."""
    optimizer = model.optimizer
    if optimizer is not None and optimizer.slots is None and optimizer.slot_names:
        optimizer.build([param for _, param in model.grads_and_params()])
    lists = [layer.params for layer in model.layers] + [layer.grads for layer in model.layers]
    lists += list(optimizer.slots or []) if optimizer is not None else []
    swapped = []                                         # (list, index, own array, shared copy)
    for arrays in lists:
        for i, own in enumerate(arrays):
            shared = parallel.shared_copy(own)
            arrays[i] = shared
            swapped.append((arrays, i, own, shared))
    try:
        yield
    finally:
        for arrays, i, own, shared in swapped:
            if i < len(arrays) and arrays[i] is shared:  # (not replaced meanwhile, e.g. by set_state)
                own[...] = shared
                arrays[i] = own


class FastEngine(Engine):
    """numba kernels, fused passes, Winograd, two cores. One per model (Sequential.compile makes it)."""
    name = "fast"

    def __init__(self):
        self.model = None
        self._worker_run = None              # the worker process of a long call, see `run`
        self._plans_key, self._plans = None, None
        self._deferred_cache = None
        self._trials = {}                    # batch size -> parallel.HalvesTrial: do halves pay?

    # ------------------------------------------------------------------------------------------
    # Plans: the ops for the whole batch (or first half) and for the second half
    # ------------------------------------------------------------------------------------------
    def plans(self, model):
        """(first, second): the ops for the first half of a batch (the layers' own gradient
        arrays) and for the second (gradient arrays of its own), made again whenever a layer
        or one of its arrays changes."""
        key = [(id(layer), [id(p) for p in layer.params], [id(g) for g in layer.grads]) for layer in model.layers]
        if self._plans_key != key:
            first = make_plan(model.layers, [layer.grads for layer in model.layers])
            second = make_plan(model.layers, [[parallel.shared_copy(np.zeros_like(g)) for g in layer.grads]
                                              for layer in model.layers])
            self._plans, self._plans_key = (first, second), key
            self._trials = {}                                # a new plan: try its halves again
        return self._plans

    @staticmethod
    def _forward(plan, x, training=False):
        """x (N, *input shape) -> the last op's output, op by op."""
        for op in plan:
            x = op.forward(x, training)
        return x

    @staticmethod
    def _backward(plan, grad):
        """The loss's gradient back through the ops, last to first (from the logits for a softmax)."""
        last = plan[-1]
        grad = last.backward_from_logits(grad) if last.outputs_softmax else last.backward(grad)
        for op in reversed(plan[:-1]):
            if grad is None:                               # no op below has weights: none needs it
                break
            grad = op.backward(grad)

    @staticmethod
    def _loss_and_grad(model, y, probs, last):
        """Mean loss and its gradient: from the logits for a softmax output (one numba pass for
        tinycnn's own cross-entropies), else from the probabilities."""
        if not last.outputs_softmax:
            return model.loss.from_probs(y, probs)
        if type(model.loss) not in (losses_module.CategoricalCrossentropy, losses_module.SparseCategoricalCrossentropy):
            return model.loss.from_logits(y, last.logits)
        logits = np.ascontiguousarray(last.logits)
        rows = logits.reshape(-1, logits.shape[-1])
        targets = model.loss._targets(y, logits.shape, logits.dtype)
        loss, grad = kernels.softmax_cross_entropy(rows, np.ascontiguousarray(targets))
        return float(loss), grad.reshape(logits.shape)

    def _in_halves(self, model, batch_size):
        """Cut this batch in two halves? With two threads, where it pays (parallel.worth_halves),
        and only when every layer has a fast op: a layer the engine does not know runs its own
        passes, which may need the whole batch (a batch's statistics) or draw random numbers
        (whose order two halves side by side would not keep)."""
        return (utils.get_num_threads() >= 2 and parallel.worth_halves(model.layers, batch_size)
                and parallel.halves_welcome()
                and not any(type(op) is LayerOp for op in self.plans(model)[0]))

    def _halves_meet(self, model):
        """True when a step in halves must meet in the middle: at a BatchNormalization (the
        batch's statistics), or before it starts, to draw a random layer's numbers for the whole
        batch. Such a model's halves run in threads (`_train_in_synced_halves`), never in a worker process."""
        return any(isinstance(op, (BatchNormOp, RandomLayerOp)) for op in self.plans(model)[0])

    # ------------------------------------------------------------------------------------------
    # The engine's interface
    # ------------------------------------------------------------------------------------------
    def train_step(self, model, x, y):
        """One step of gradient descent on a batch -> (mean loss before the step, outputs).

        The loss comes first: when it is NaN or infinite the step is not taken. The step goes
        in halves where they can pay (`_in_halves`) and, with tuning on, where a second core
        was idle and the latest timed trial of this batch size found them quicker than one
        thread (parallel.HalvesTrial). Subnormal floats are flushed to zero (denormals.py).
        """
        with denormals.flushed_to_zero():
            return self._train_step(model, x, y)

    def _train_step(self, model, x, y):
        self.model = model
        if not self._in_halves(model, len(x)):
            return self._train_whole(model, x, y)
        if not tuning.enabled():                             # (deterministic: always halves)
            return self._train_step_in_halves(model, x, y)
        trial = self._trials.setdefault(len(x), parallel.HalvesTrial())
        halves, started = trial.halves_now(), time.perf_counter()
        loss, probs = (self._train_step_in_halves if halves else self._train_whole)(model, x, y)
        trial.record(halves, time.perf_counter() - started)
        return loss, probs

    def _train_step_in_halves(self, model, x, y):
        if self._halves_meet(model):
            loss, probs, halves = self._train_in_synced_halves(model, x, y)
        else:
            loss, probs, halves = self._train_in_halves(model, x, y)     # two halves' gradients
        if math.isfinite(loss):
            self._apply_gradients_in_halves(model, halves)
        return loss, probs

    def _train_whole(self, model, x, y):
        plan = self.plans(model)[0]
        probs = self._forward(plan, x, training=True)
        loss, grad = self._loss_and_grad(model, y, probs, plan[-1])
        if math.isfinite(loss):
            self._backward(plan, grad)
            self._apply_gradients(model)
        return loss, probs

    def predict_step(self, model, x):
        """(outputs, logits or None) for a batch, in two halves side by side where there are two
        threads; the logits only for a softmax output. Subnormal floats are flushed to zero."""
        with denormals.flushed_to_zero():
            return self._predict_step(model, x)

    def _predict_step(self, model, x):
        self.model = model
        first_plan, second_plan = self.plans(model)
        if not self._in_halves(model, len(x)):
            return self._forward_in_pieces(first_plan, x)
        h = parallel.first_half_size(len(x))
        first_half = lambda: self._forward_in_pieces(first_plan, x[:h])      # noqa: E731
        worker, shared = self._fork_or_get_worker(model, x[h:])
        if worker is not None:                              # the second half in the worker process
            rows = len(x) - h
            shared.x[:rows] = x[h:]
            probs_0, logits_0 = worker.run_both(first_half, Job.FORWARD_HALF, rows, len(x))
            probs_1, logits_1 = shared.probs[:rows], shared.logits[:rows]
        else:                                               # ... or in the worker thread
            (probs_0, logits_0), (probs_1, logits_1) = self._run_both(
                first_half, lambda: self._forward_in_pieces(second_plan, x[h:]))
        logits = np.concatenate([logits_0, logits_1]) if logits_0 is not None else None
        return np.concatenate([probs_0, probs_1]), logits

    @contextlib.contextmanager
    def run(self, model, batch_size, batches, x, y=None):
        """Around one fit/evaluate/predict call: one BLAS thread (the halves share the work), and
        for a long call a worker process (`_worker_process_for`)."""
        self.model = model
        announce_first_compile()                   # before a worker process is forked
        with parallel.blas_threads(), self._worker_process_for(model, batch_size, batches, x, y):
            yield

    # ------------------------------------------------------------------------------------------
    # One step in halves
    # ------------------------------------------------------------------------------------------
    def _apply_gradients(self, model):
        """The optimizer's step on the whole batch: the textbook rule for other optimizers, the
        same rule through numba (kernels.*_update_) for tinycnn's SGD, Adam and AdamW, after the
        weight decay (optimizer.apply_weight_decay) where the optimizer has one."""
        optimizer, pairs = model.optimizer, self._grads_and_params(model)
        if type(optimizer) not in _NUMBA_OPTIMIZERS:
            optimizer.apply_gradients(pairs)
            return
        optimizer._check_pairs(pairs)                           # checks shapes; makes the slots at the first step
        coefficients = optimizer.coefficients_for([param for _, param in pairs])
        for i, ((grad, param), slots, numbers) in enumerate(zip(pairs, optimizer.slots, coefficients)):
            if optimizer.decays(i):
                optimizer.apply_weight_decay(param, numbers)
            _update(optimizer, grad, param, slots, numbers)
        optimizer.iterations += 1

    def _train_in_halves(self, model, x, y):
        """Forward and backward of the batch in two halves, one per thread or process.

        The first plan takes the first half (its gradients in the layers' own arrays), the
        second plan the second half. Each backpropagates its share of the batch's MEAN loss.
        A big Dense layer's dL/dkernel is left to _apply_gradients_in_halves
        (parallel.defers_kernel_grad): its halves leave their rows of x and dL/dz in shared
        buffers. Returns (the batch's mean loss, its outputs, what the optimizer's step needs).
        """
        n, h = len(x), parallel.first_half_size(len(x))
        first_plan, second_plan = self.plans(model)
        first_half = lambda: self._train_half(model, first_plan, x[:h], y[:h], n)     # noqa: E731
        worker, shared = self._fork_or_get_worker(model, x[h:], y[h:])
        deferred = self._deferred_dense(model, n, shared.deferred if worker is not None else self._deferred_buffers(model, n))
        with _deferred_dense_rows(first_plan, deferred, 0, h):
            if worker is not None:                          # the second half in the worker process
                rows = n - h                                # (whose job sets its plan's rows)
                shared.x[:rows], shared.y[:rows] = x[h:], y[h:]
                loss_0, probs_0 = worker.run_both(first_half, Job.TRAIN_HALF, rows, n)
                loss_1, probs_1 = float(shared.loss[0]), shared.probs[:rows]
            else:                                           # ... or in the worker thread
                with _deferred_dense_rows(second_plan, deferred, h, n):
                    (loss_0, probs_0), (loss_1, probs_1) = self._run_both(
                        first_half, lambda: self._train_half(model, second_plan, x[h:], y[h:], n))
        halves = types.SimpleNamespace(worker=worker, deferred=deferred, n=n)
        return (loss_0 + loss_1) / n, np.concatenate([probs_0, probs_1]), halves

    def _train_in_synced_halves(self, model, x, y):
        """_train_in_halves for a model whose halves must meet (`_halves_meet`), in threads.

        Random layers first draw their numbers for the whole batch, in the layers' order, as
        one pass would (RandomLayerOp.drawn: each half its rows). Then forward runs in
        stretches that end at a BatchNormalization: the two halves run a stretch side by
        side, each ends with its sums (BatchNormOp.batch_sums), this thread works out the
        batch's statistics from both, and the next stretch starts by normalising with them.
        Backward likewise, from the loss down, meeting at each BatchNormalization to add up
        its sums of dL/dz. Returns what _train_in_halves returns.
        """
        n, h = len(x), parallel.first_half_size(len(x))
        plans = self.plans(model)
        for ops in zip(*plans):
            if isinstance(ops[0], RandomLayerOp):
                drawn = ops[0].layer.draw(n)
                ops[0].drawn, ops[1].drawn = tuple(a[:h] for a in drawn), tuple(a[h:] for a in drawn)
        try:
            meets = [i for i, op in enumerate(plans[0]) if isinstance(op, BatchNormOp)]
            probs = self._synced_forward(plans, [x[:h], x[h:]], meets)
            losses, grads = [], []
            for plan, probs_half, y_half in zip(plans, probs, (y[:h], y[h:])):
                loss, grad = self._loss_and_grad(model, y_half, probs_half, plan[-1])
                grad *= grad.dtype.type(len(y_half) / n)      # d(mean over N)/dz = d(mean over rows)/dz * rows/N
                losses.append(loss * len(y_half))
                grads.append(grad)
            self._synced_backward(plans, grads, meets)
        finally:
            for op in plans[0] + plans[1]:
                if isinstance(op, RandomLayerOp):
                    op.drawn = None
        halves = types.SimpleNamespace(worker=None, deferred={}, n=n)
        return sum(losses) / n, np.concatenate(probs), halves

    def _synced_forward(self, plans, halves, meets):
        """The two halves' outputs, meeting at each BatchNormOp (indexes `meets`)."""
        start, statistics = 0, None
        for stop in meets + [len(plans[0])]:
            def stretch(k, start=start, stop=stop, statistics=statistics):
                plan, x = plans[k], halves[k]
                if statistics is not None:                 # the stretch starts at a BatchNormOp
                    x = plan[start].normalize(*statistics)
                    start += 1
                for op in plan[start:stop]:
                    x = op.forward(x, training=True)
                return plan[stop].batch_sums(x) if stop < len(plan) else x
            results = self._run_both(lambda: stretch(0), lambda: stretch(1))
            if stop == len(plans[0]):
                return list(results)
            statistics = plans[0][stop].statistics(results)        # (also moves the moving statistics, once)
            start = stop

    def _synced_backward(self, plans, grads, meets):
        """Backward of both halves from dL/dz of the output, meeting at each BatchNormOp."""
        top, means = len(plans[0]), None
        for bottom in reversed([-1] + meets):
            def stretch(k, top=top, bottom=bottom, means=means):
                plan, grad = plans[k], grads[k]
                if means is not None:                      # the stretch starts at a BatchNormOp
                    grad = plan[top].backward_input(means)
                for i in range(top - 1, bottom, -1):
                    if grad is None:                       # no op below has weights
                        break
                    op = plan[i]
                    last = i == len(plan) - 1 and op.outputs_softmax
                    grad = op.backward_from_logits(grad) if last else op.backward(grad)
                return plan[bottom].backward_sums(grad) if bottom >= 0 else None
            results = self._run_both(lambda: stretch(0), lambda: stretch(1))
            if bottom >= 0:
                means = plans[0][bottom].backward_totals(results)
                top = bottom

    def _train_half(self, model, plan, x, y, n):
        """Forward and backward of (x, y), part of a batch of n rows, through `plan`:
        gradients of its share of the batch's MEAN loss -> (its loss * its rows, its outputs).

        Where a convolution's scratch arrays (patches or Winograd tiles) are big, a few rows at
        a time (parallel.rows_per_piece, as predict does), the pieces' gradients added.
        """
        piece = parallel.rows_per_piece(plan, len(x))
        if piece >= len(x):
            return self._train_piece(model, plan, x, y, n)
        loss_sum, outputs, grad_sums = 0.0, [], None
        for start in range(0, len(x), piece):
            loss, probs = self._train_piece(model, plan, x[start:start + piece], y[start:start + piece], n)
            loss_sum += loss
            outputs.append(probs)
            grads = [g for op in plan for g in op.grads]
            if grad_sums is None:
                grad_sums = [g.copy() for g in grads]
            else:
                for total, g in zip(grad_sums, grads):
                    total += g
        for total, g in zip(grad_sums, grads):
            g[...] = total
        return loss_sum, np.concatenate(outputs)

    def _train_piece(self, model, plan, x, y, n):
        """_train_half for rows that go through the ops at once."""
        probs = self._forward(plan, x, training=True)
        loss, grad = self._loss_and_grad(model, y, probs, plan[-1])
        grad *= grad.dtype.type(len(x) / n)              # d(mean over N)/dz = d(mean over rows)/dz * rows/N
        self._backward(plan, grad)
        return loss * len(x), probs

    def _forward_in_pieces(self, plan, x):
        """(output, logits or None) of the forward pass without training, a few rows at a time
        (parallel.rows_per_piece: small pieces keep a big convolution's scratch arrays in the cache)."""
        piece = parallel.rows_per_piece(plan, len(x))
        softmax = plan[-1].outputs_softmax
        if piece >= len(x):
            probs = self._forward(plan, x)
            return probs, (plan[-1].logits if softmax else None)
        pieces = [self._forward_in_pieces(plan, x[start:start + piece]) for start in range(0, len(x), piece)]
        probs = np.concatenate([p for p, _ in pieces])
        return probs, (np.concatenate([g for _, g in pieces]) if softmax else None)

    def _deferred_buffers(self, model, n):
        """{op index: (x rows (n, in), dL/dz rows (n, units))} in shared memory for the Dense ops
        whose dL/dkernel a step in halves computes later (parallel.defers_kernel_grad); made
        for at least n rows and kept (a worker process's are made before its fork)."""
        plan = self.plans(model)[0]
        key = [(i, op.layer.kernel) for i, op in enumerate(plan) if parallel.defers_kernel_grad(op.layer)]
        cached = self._deferred_cache
        if cached is None or not _same_objects([k for _, k in cached[0]], [k for _, k in key]) or cached[1] < n:
            buffers = {i: (parallel.shared_copy(np.zeros((n, kernel.shape[0]), kernel.dtype)),
                           parallel.shared_copy(np.zeros((n, kernel.shape[1]), kernel.dtype))) for i, kernel in key}
            self._deferred_cache = cached = (key, n, buffers)
        return cached[2]

    def _deferred_dense(self, model, n, buffers):
        """The buffers to use for a batch of n in halves, or {} where its halves go in pieces
        (each piece would overwrite the rows of the one before)."""
        h = parallel.first_half_size(n)
        return buffers if buffers and parallel.rows_per_piece(self.plans(model)[0], h) >= h else {}

    def _apply_gradients_in_halves(self, model, halves):
        """The optimizer's step after _train_in_halves, shared by the two threads or processes:
        each completes the batch's gradient for its part of every parameter (parallel.part_of)
        and applies the rule to it, with this step's coefficients. Bit for bit what adding the
        halves' gradients up and one step give, except for a big Dense kernel, whose gradient
        is one product over the batch instead of two added up (float rounding).
        """
        optimizer, worker, pairs = model.optimizer, halves.worker, self._grads_and_params(model)
        optimizer._check_pairs(pairs)                           # checks shapes; makes the slots at the first step
        coefficients = optimizer.coefficients_for([param for _, param in pairs])
        part = lambda number: self._update_part(model, number, coefficients, halves.deferred, halves.n)   # noqa: E731
        if all(param.size < parallel.MIN_SPLIT_VALUES for _, param in pairs):
            part(0)                                             # small parameters only: all here
        elif worker is None:                                    # the worker thread takes the second part
            self._run_both(lambda: part(0), lambda: part(1))
        elif _same_objects(self._worker_run.optimizer_arrays, self._optimizer_arrays(model)):   # the worker has them
            self._worker_run.shared.coefficients[:len(coefficients), :len(coefficients[0])] = coefficients
            worker.run_both(lambda: part(0), Job.UPDATE_PART, len(coefficients[0]), halves.n)
        else:                            # the optimizer or its slots changed since the fork: all here
            part(0)
            part(1)
        optimizer.iterations += 1

    def _update_part(self, model, part, coefficients, deferred, n):
        """Part 0 or 1 of the optimizer's step: for each parameter, that part of its values
        (parallel.part_of): the batch's gradient there, then the rule. The gradient is
        grad += the second plan's grad (the two halves'), or for a kernel in `deferred` (op
        index -> the n rows of x and dL/dz) its rows of dL/dkernel = x^T @ dZ, all n rows at once."""
        optimizer = model.optimizer
        first_plan, second_plan = self.plans(model)
        second_grads = [g for op in second_plan for g in op.grads]
        later = {id(first_plan[i].layer.kernel): rows for i, rows in deferred.items()}
        for index, ((grad, param), second_grad, slots, numbers) in enumerate(zip(
                self._grads_and_params(model), second_grads, optimizer.slots, coefficients)):
            values = parallel.part_of(param.shape, part)
            if values.start == values.stop:             # a small parameter: all in the other part
                continue
            grad_part = grad.reshape(-1)[values]
            if id(param) in later:                      # this part's rows of dL/dkernel (grad_part's values)
                x_rows, dz_rows = later[id(param)]
                first, last = values.start // param.shape[1], values.stop // param.shape[1]
                kernels.matmul(x_rows[:n, first:last].T, dz_rows[:n], out=grad[first:last])
            else:
                grad_part += second_grad.reshape(-1)[values]      # the two halves' gradients
            param_part = param.reshape(-1)[values]
            if optimizer.decays(index):                 # weight decay, on this part's values
                optimizer.apply_weight_decay(param_part, numbers)
            _update(optimizer, grad_part, param_part, [s.reshape(-1)[values] for s in slots], numbers)

    @staticmethod
    def _grads_and_params(model):
        """The model's (grad, trainable param) pairs (Sequential.grads_and_params), in the order
        of the optimizer's slots and of the ops' gradient lists."""
        return model.grads_and_params()

    def _optimizer_arrays(self, model):
        """The optimizer and the arrays a worker process's part of its step writes to."""
        arrays = [a for g, p in self._grads_and_params(model) for a in (g, p)]
        return [model.optimizer] + arrays + [s for slots in (model.optimizer.slots or []) for s in slots]

    # ------------------------------------------------------------------------------------------
    # The worker process of a long call
    # ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _worker_process_for(self, model, batch_size, batches, x, y=None):
        """During one fit/evaluate/predict call of `batches` batches, a worker process for the
        batches' second halves, where it pays (parallel.WorkerProcess); else nothing.

        Made before the fork, in shared memory: the model's arrays (_shared_model_arrays), the
        second plan's gradients, buffers for a half's inputs (x, y) and outputs (loss, probs,
        logits), the optimizer step's coefficients and the big Dense layers' rows. The fork
        waits for the first batch, which this thread runs whole: by then this process has
        loaded the kernels' machine code, and the worker shares it instead of loading its own.
        """
        if (self._worker_run is not None or not parallel.can_fork() or batches < parallel.MIN_PROCESS_BATCHES
                or not self._in_halves(model, batch_size) or self._halves_meet(model)):
            yield
            return
        with _shared_model_arrays(model):
            second_plan = self.plans(model)[1]
            rows = batch_size - parallel.first_half_size(batch_size)
            outputs = (rows,) + tuple(model.layers[-1].output_shape)
            shared = types.SimpleNamespace(
                x=parallel.shared_copy(np.zeros((rows,) + x.shape[1:], x.dtype)),
                y=None if y is None else parallel.shared_copy(np.zeros((rows,) + y.shape[1:], y.dtype)),
                loss=parallel.shared_copy(np.zeros(1)),
                probs=parallel.shared_copy(np.zeros(outputs, model.dtype)),
                logits=parallel.shared_copy(np.zeros(outputs, model.dtype)),
                coefficients=parallel.shared_copy(np.zeros((len(self._grads_and_params(model)), 8))),   # float64: exact
                deferred=self._deferred_buffers(model, batch_size))

            def train_half(rows, n):                            # Job.TRAIN_HALF
                with _deferred_dense_rows(second_plan, self._deferred_dense(model, n, shared.deferred), n - rows, n):
                    shared.loss[0], shared.probs[:rows] = self._train_half(model, second_plan, shared.x[:rows],
                                                                           shared.y[:rows], n)

            def forward_half(rows, n):                          # Job.FORWARD_HALF
                shared.probs[:rows], logits = self._forward_in_pieces(second_plan, shared.x[:rows])
                if logits is not None:
                    shared.logits[:rows] = logits

            def update_part(count, n):                          # Job.UPDATE_PART: count coefficients per parameter
                by_dtype = {}                                   # (the same numbers for every parameter of a dtype)
                for (_, param), row in zip(self._grads_and_params(model), shared.coefficients):
                    if param.dtype not in by_dtype:
                        by_dtype[param.dtype] = tuple(param.dtype.type(c) for c in row[:count])
                coefficients = [by_dtype[param.dtype] for _, param in self._grads_and_params(model)]
                self._update_part(model, 1, coefficients, self._deferred_dense(model, n, shared.deferred), n)

            jobs = {Job.TRAIN_HALF: train_half, Job.FORWARD_HALF: forward_half, Job.UPDATE_PART: update_part}
            self._worker_run = types.SimpleNamespace(
                worker=None, shared=shared, jobs=[jobs[job] for job in Job], batches_before_fork=1,
                second_plan=second_plan, loss=model.loss, optimizer_arrays=None)
            try:
                yield
            finally:
                run, self._worker_run = self._worker_run, None
                if run.worker is not None:
                    run.worker.close()

    def _run_both(self, first, second):
        """(first(), second()): side by side in the worker thread, or both in this thread while a
        worker process is due (the batch before its fork): no second thread's memory then."""
        if self._worker_run is not None and self._worker_run.worker is None:
            return first(), second()
        return parallel.run_both(first, second)

    def _fork_or_get_worker(self, model, x, y=None):
        """(the worker process, its shared buffers) for this second half if this call has one,
        the model is still the one it copied and the half fits its buffers, else (None, None):
        then the worker thread takes it. Forks the worker process at the second batch."""
        run = self._worker_run
        if run is None or run.second_plan is not self.plans(model)[1] or run.loss is not model.loss:
            return None, None                              # none, or the model changed since (a callback)
        shared = run.shared
        if len(x) > len(shared.x) or x.shape[1:] != shared.x.shape[1:] or x.dtype != shared.x.dtype:
            return None, None
        if y is not None and (shared.y is None or y.shape[1:] != shared.y.shape[1:] or y.dtype != shared.y.dtype):
            return None, None
        if run.worker is None:
            if run.batches_before_fork > 0:                # this batch whole in this thread, the fork at the next
                run.batches_before_fork -= 1
                return None, None
            arrays = self._optimizer_arrays(model)         # what the worker's optimizer steps will see,
            if all(parallel.is_shared(a) for a in arrays[1:]):   # if its changes are seen here
                run.optimizer_arrays = arrays
            run.worker = parallel.WorkerProcess(run.jobs)
        return run.worker, shared


_NUMBA_OPTIMIZERS = (optimizers_module.SGD, optimizers_module.Adam, optimizers_module.AdamW)


def _update(optimizer, grad, param, slots, coefficients):
    """optimizer's rule on one parameter (or a part of it): numba for SGD, Adam and AdamW, the
    textbook's arithmetic operation for operation (kernels.*_update_; bit for bit but where a
    step flushes a subnormal number to zero, denormals.py); the optimizer's own `update` for
    others. The weight decay is not in here (the callers apply it first)."""
    flat = [a.reshape(-1) for a in (param, grad, *slots)] if all(
        a.flags.c_contiguous for a in (param, grad, *slots)) else None
    if type(optimizer) is optimizers_module.SGD and slots and flat:
        lr, momentum = coefficients[:2]
        kernels.sgd_momentum_update_(*flat, lr, momentum, optimizer.nesterov)
    elif type(optimizer) in (optimizers_module.Adam, optimizers_module.AdamW) and flat:
        kernels.adam_update_(*flat, *coefficients[:4])
    else:
        optimizer.update(grad, param, slots, coefficients)
