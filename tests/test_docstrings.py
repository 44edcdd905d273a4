"""Every public module, class, function and method of rnnkit has a docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import rnnkit


def public_objects():
    for info in pkgutil.walk_packages(rnnkit.__path__, "rnnkit."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        yield info.name, module
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{info.name}.{name}", obj
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (
                        inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod, property))
                    ):
                        continue
                    if attr in ("forward", "extra_repr") or _documented_upstream(obj, attr):
                        continue  # documented by the class (forward) or by the base class it overrides
                    yield f"{info.name}.{name}.{attr}", member


def _documented_upstream(cls, attr):
    return any(getattr(getattr(base, attr, None), "__doc__", None) for base in cls.__mro__[1:])


def test_every_public_object_has_a_docstring():
    missing = []
    for qualname, obj in public_objects():
        target = (
            obj.__func__
            if isinstance(obj, (classmethod, staticmethod))
            else obj.fget
            if isinstance(obj, property)
            else obj
        )
        if not (inspect.getdoc(target) or "").strip():
            missing.append(qualname)
    assert not missing, "missing docstrings:\n" + "\n".join(missing)
