"""Tiny floats flushed to zero while the fast engine computes a step, as TensorFlow does.

A nonzero float32 of magnitude below 1.18e-38 is "subnormal" (denormal). Intel's cores
handle an arithmetic operation on one in microcode, 10-100 times slower than on a normal
number. Training makes them: SGD's velocity v = momentum * v - lr * g, for a weight whose
gradient stays 0 (a feature that ReLU keeps at 0), shrinks by 0.9 a step and after some
800 steps is subnormal, where it stays (at 4 x 2^-149: 0.9 x 4 rounds back to 4).
cnn_categorical has tens of thousands of such velocities. So during each training and
prediction step the fast engine sets the x86 MXCSR register's two flags, FTZ (a subnormal
result is written as 0) and DAZ (a subnormal input is read as 0), and puts them back as
they were after it. TensorFlow sets the same two flags in its threads on x86, so Keras
computes so too (PyTorch does not, by default). The reference engine leaves them alone:
where a number falls below 1.18e-38 the two engines part (a velocity of 1e-39 is 0 in one
and not in the other), which the tests' tolerances, relative to the numbers' scale, allow.
MXCSR belongs to one thread: the engine's worker thread keeps both flags on (it runs only
the engine's halves), and a worker process forked during a step starts with the forking
thread's flags. On other CPUs (no MXCSR) this does nothing.
"""
import contextlib
import platform

import numpy as np

FLUSH_TO_ZERO = 0x8000          # MXCSR bit 15: FTZ
DENORMALS_ARE_ZERO = 0x0040     # MXCSR bit 6: DAZ
FLAGS = FLUSH_TO_ZERO | DENORMALS_ARE_ZERO

ON_X86 = platform.machine().lower() in ("x86_64", "amd64")

if ON_X86:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from tinycnn.engines.fast.kernels import _jit      # numba's cache, or none on a read-only install

    def _call(builder, name, pointer):          # llvm.x86.sse.stmxcsr / ldmxcsr take an i8*
        function_type = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
        function = cgutils.get_or_insert_function(builder.module, function_type, name)
        builder.call(function, [builder.bitcast(pointer, ir.IntType(8).as_pointer())])

    @intrinsic
    def _stmxcsr(typingctx):
        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            _call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.load(slot)
        return types.uint32(), codegen

    @intrinsic
    def _ldmxcsr(typingctx, value):
        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _call(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()
        return types.void(types.uint32), codegen

    @_jit()
    def get_mxcsr():
        """This thread's MXCSR register (an int)."""
        return _stmxcsr()

    @_jit()
    def set_mxcsr(value):
        """Load `value` (a uint32) into this thread's MXCSR register."""
        _ldmxcsr(value)


def flags_on():
    """True when this thread flushes subnormal floats to zero (False where there is no MXCSR)."""
    return ON_X86 and (int(get_mxcsr()) & FLAGS) == FLAGS


def turn_on():
    """FTZ and DAZ on in this thread, for good (the worker thread)."""
    if ON_X86:
        set_mxcsr(np.uint32(int(get_mxcsr()) | FLAGS))


@contextlib.contextmanager
def flushed_to_zero():
    """FTZ and DAZ on in this thread within the block; the two flags as they were after it
    (the register's other bits, such as the rounding mode, are not touched)."""
    if not ON_X86:
        yield
        return
    register = int(get_mxcsr())
    try:
        set_mxcsr(np.uint32(register | FLAGS))
        yield
    finally:
        set_mxcsr(np.uint32(int(get_mxcsr()) & ~FLAGS | register & FLAGS))
