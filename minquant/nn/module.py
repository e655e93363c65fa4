r"""``Parameter`` and ``Module``: the two building blocks of the float engine.

A :class:`Module` is a function with a memory. ``forward(x)`` computes the output and keeps
what the backward pass will need; ``backward(grad_out)`` receives
$\partial L / \partial y$ and returns $\partial L / \partial x$, adding
$\partial L / \partial \theta$ to the ``.grad`` of every :class:`Parameter` $\theta$ on the
way (the chain rule, one layer at a time). There is no autograd tape: ``Sequential``
simply calls the ``backward`` of its children in reverse order.

Parameters and sub-modules are found by looking at the module's attributes, in the order they
were assigned; names are dotted paths (``"0.weight"``), exactly as PyTorch names them, so a
state dict maps one to one onto ``torch.nn`` (BatchNorm's ``num_batches_tracked`` aside).

Reference: A. Karpathy, *micrograd* (the same idea, for scalars).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class Parameter:
    r"""A trainable array: ``.data`` and its gradient ``.grad`` (same shape and dtype).

    ``.grad`` starts as zeros and ``backward`` *adds* to it, as in PyTorch, so gradients of
    several backward passes accumulate until ``zero_grad()`` resets them.

    >>> p = Parameter(np.ones((2, 3)))
    >>> p.data.dtype, p.grad.shape, float(p.grad.sum())
    (dtype('float32'), (2, 3), 0.0)
    """

    def __init__(self, data: np.ndarray, dtype: np.dtype | type | None = np.float32) -> None:
        self.data = np.array(data, dtype=dtype)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def zero_grad(self) -> None:
        self.grad = np.zeros_like(self.data)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses implement ``forward(x)`` and ``backward(grad_out)``. Buffers (arrays that are
    state but not trained, such as BatchNorm's running statistics) are attributes listed in
    the class attribute ``_buffers``; they are saved in ``state_dict`` with the parameters.
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.training = True

    # --- the two passes -------------------------------------------------------------------

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def _need_cache(self, cache: object) -> None:
        """Raise the error for a backward pass that has no forward pass to go back through."""
        if cache is None:
            raise RuntimeError(
                f"{self._name()}.backward() called before forward(): run the forward pass "
                "first, it stores what the backward pass needs"
            )

    def _name(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # --- walking the tree -----------------------------------------------------------------

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named ``prefix``, ``""`` at the root) and all its descendants."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    yield (f"{prefix}.{name}" if prefix else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, module in self.named_modules():
            for name in module._buffers:
                yield (f"{prefix}.{name}" if prefix else name), getattr(module, name)

    # --- modes and state ------------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or evaluation mode on this module and below."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def to(self, dtype: np.dtype | type) -> Module:
        """Cast every parameter (and its gradient) and buffer to ``dtype``, in place.

        >>> from minquant.nn import Linear
        >>> Linear(2, 3).to(np.float64).weight.data.dtype
        dtype('float64')
        """
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for module in self.modules():
            for name in module._buffers:
                setattr(module, name, getattr(module, name).astype(dtype))
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers, keyed by dotted name (as PyTorch)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: buf.copy() for name, buf in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters and buffers; keys and shapes must match exactly.

        Values are cast to the dtype the module already has.

        >>> from minquant.nn import Linear
        >>> layer = Linear(2, 3)
        >>> layer.load_state_dict({"weight": np.zeros((3, 2))})
        Traceback (most recent call last):
        ...
        ValueError: load_state_dict: missing keys ['bias']
        """
        targets = {name: p.data for name, p in self.named_parameters()}
        targets.update(dict(self.named_buffers()))
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing:
            raise ValueError(f"load_state_dict: missing keys {missing}")
        if unexpected:
            raise ValueError(f"load_state_dict: unexpected keys {unexpected}")
        for name, target in targets.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {value.shape} in the state dict, "
                    f"but the model expects {target.shape}"
                )
        # NOTE: copy in place, so that anything holding a reference to an array sees the update.
        for name, target in targets.items():
            target[...] = state[name]

    # --- printing -------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return self._name()
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        lines.append(")")
        return "\n".join(lines)


class Sequential(Module):
    """Modules applied one after the other; ``backward`` visits them in reverse order.

    Indexable (``model[0]``, ``model[2:]``), iterable and sized, as ``torch.nn.Sequential``.

    >>> from minquant.nn import Linear, ReLU
    >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
    >>> len(model), type(model[1]).__name__, [name for name, _ in model.named_parameters()]
    (3, 'ReLU', ['0.weight', '0.bias', '2.weight', '2.bias'])
    >>> model(np.zeros((5, 4), dtype=np.float32)).shape
    (5, 2)
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(
                    f"Sequential takes Modules, got {type(module).__name__} at position {i}"
                )
            setattr(self, str(i), module)

    def _layers(self) -> list[Module]:
        return [module for _, module in self.named_children()]

    def __len__(self) -> int:
        return len(self._layers())

    def __iter__(self) -> Iterator[Module]:
        return iter(self._layers())

    def __getitem__(self, index: int | slice) -> Module:
        if isinstance(index, slice):
            return Sequential(*self._layers()[index])
        return self._layers()[index]

    def __setitem__(self, index: int, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"Sequential takes Modules, got {type(module).__name__}")
        name = str(range(len(self))[index])
        setattr(self, name, module)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for module in self:
            x = module(x)
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        for module in reversed(self._layers()):
            grad_out = module.backward(grad_out)
        return grad_out
