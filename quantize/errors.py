"""Error types of the toolchain.

Every user mistake (bad config, missing path, unsupported model, ...) raises a subclass of
:class:`UserError`; CLIs print its message on one line and exit 2 without a traceback.
Numerical failures raise :class:`NumericalError`, which callers tag with the layer name.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user asked for; printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration field holds a value outside what is allowed.

    The message names the config class and field, the value given and what is allowed.
    """

    def __init__(self, owner: str, field: str, value: object, allowed: str) -> None:
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{owner}.{field}={value!r} is invalid: expected {allowed}")


class NumericalError(UserError):
    """NaN/Inf in weights or statistics, or a Hessian that damping cannot repair.

    ``layer`` is filled in by the caller that knows which module was being solved.
    """

    def __init__(self, message: str, layer: str | None = None) -> None:
        self.detail = message
        self.layer = layer
        super().__init__(self._format())

    def _format(self) -> str:
        return f"layer {self.layer}: {self.detail}" if self.layer else self.detail

    def with_layer(self, layer: str) -> "NumericalError":
        """Return the same error naming ``layer`` (for re-raising from the model walker)."""
        return NumericalError(self.detail, layer=layer)
