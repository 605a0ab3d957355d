"""The trust boundary for Caffe's ``type: "Python"`` layers: when, from where and what user code runs.

WHY: a prototxt is data, but ``python_param { module layer }`` names code. Caffe imports the
module from ``sys.path`` (``PYTHONPATH``) and calls the named attribute; anything importable then
runs (module ``subprocess``, layer ``Popen``). Here:

- commands that only read a net (``inspect``, ``export-onnx``, ``draw-net``, the upgrades) build
  inside :func:`user_code_refused`, so no user module is imported at all;
- commands that run a net import ``python_param.module`` from ``sys.path`` as Caffe does, but only
  absolute module names, and only a class derived from ``caffe.Layer`` is instantiated;
- while the module is imported, ``import caffe`` in it (and ``caffe.io``, ``caffe.proto``, ...)
  means caffe-compat's pycaffe, then the process's own ``caffe`` entries (a real Caffe the user
  imported, or none) are put back, so nothing is shadowed outside the layer module.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
from types import ModuleType
from typing import Callable, Iterator


#: Why user code may not be imported now (set by commands that only read), or None.
_REFUSED: contextvars.ContextVar[str | None] = contextvars.ContextVar("caffe_compat_user_code", default=None)

#: Returns the modules ``import caffe`` should give a layer module (``caffe``, ``caffe.io``, ...);
#: set by the package root to pycaffe's (which sits above this package).
_caffe_modules: Callable[[], dict[str, ModuleType]] | None = None


def provide_caffe(modules: Callable[[], dict[str, ModuleType]]) -> None:
    """Make ``import caffe`` inside Python layer modules resolve to ``modules()``."""
    global _caffe_modules
    _caffe_modules = modules


@contextlib.contextmanager
def user_code_refused(why: str) -> Iterator[None]:
    """Within this block, building a net with a Python layer fails (naming ``why``) before any import."""
    token = _REFUSED.set(why)
    try:
        yield
    finally:
        _REFUSED.reset(token)


def user_code_refusal() -> str | None:
    """Why user code may not be imported now (the read-only command's name), or None."""
    return _REFUSED.get()


def python_layer_name(param) -> str:
    """``module.layer`` of a Python layer, as inspect shows it."""
    return f"{param.python_param.module}.{param.python_param.layer}"


@contextlib.contextmanager
def _caffe_is_caffe_compat() -> Iterator[None]:
    """``import caffe`` gives caffe-compat's pycaffe inside the block; the old entries come back after."""
    ours = _caffe_modules() if _caffe_modules is not None else {}
    if not ours:
        yield
        return
    saved = {k: m for k, m in sys.modules.items() if k == "caffe" or k.startswith("caffe.")}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(ours)
    try:
        yield
    finally:
        for name in [k for k in sys.modules if k == "caffe" or k.startswith("caffe.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def _is_module_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _not_found(exc: ModuleNotFoundError, module: str) -> bool:
    """True when ``module`` itself (or a package above it) is missing, not something it imports."""
    return exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))


def trusted_layer_class(param, base: type, fail: Callable[[str], Exception]) -> type:
    """The class ``python_param.layer`` of ``python_param.module``, imported as Caffe does and
    checked to derive from ``base`` (``caffe.Layer``) before anything calls it."""
    p = param.python_param
    if not p.module or not p.layer:
        raise fail("python_param needs both module and layer")
    name = python_layer_name(param)
    refused = _REFUSED.get()
    if refused is not None:
        raise fail(f"Python layer {name} not imported: {refused} never runs user code")
    if not _is_module_name(p.module):
        raise fail(f"python_param.module '{p.module}' is not an absolute module name (relative or invalid "
                   "names are refused; Caffe imports modules by name from PYTHONPATH)")
    if not p.layer.isidentifier():
        raise fail(f"python_param.layer '{p.layer}' is not a class name")
    try:
        with _caffe_is_caffe_compat():
            module = importlib.import_module(p.module)
    except ModuleNotFoundError as exc:
        if not _not_found(exc, p.module):
            raise fail(f"importing python_param.module '{p.module}' failed inside the module: {exc}") from exc
        raise fail(f"cannot import python_param.module '{p.module}' ({exc}); put its folder on PYTHONPATH, "
                   "as for Caffe") from None
    except Exception as exc:  # the user's module raised while importing: name it as such
        raise fail(f"importing python_param.module '{p.module}' failed inside the module: "
                   f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, p.layer, None)
    where = getattr(module, "__file__", None) or "built in"
    if cls is None:
        raise fail(f"module '{p.module}' ({where}) has no class '{p.layer}'")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise fail(f"{name} ({where}) is not a class derived from caffe.Layer; only caffe.Layer "
                   "subclasses are instantiated as Python layers")
    return cls
