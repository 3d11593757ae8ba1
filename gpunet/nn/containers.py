"""``ModuleList`` and ``ModuleDict``: hold submodules (registered, so their
parameters train and save) without deciding how they are wired; the module that
holds them writes ``forward`` and ``backward``, as in PyTorch."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .module import Module


def _checked(where: str, name: str, module) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{where}: {name!r} is a {type(module).__name__}, expected a Module")
    return module


class ModuleList(Module):
    """A list of modules, children named ``"0"``, ``"1"``, ... as
    ``torch.nn.ModuleList``, so state-dict keys are ``"<list>.<i>.weight"``."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self)), _checked("ModuleList", str(len(self)), module))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self) -> Iterator[Module]:
        return self.children()

    def __getitem__(self, index):
        modules = list(self.children())
        if isinstance(index, slice):
            return ModuleList(modules[index])
        return modules[index]

    def __setitem__(self, index: int, module: Module) -> None:
        name = str(range(len(self))[index])  # negative indices too; IndexError past the end
        setattr(self, name, _checked("ModuleList", name, module))

    def forward(self, x):
        raise NotImplementedError("ModuleList has no forward: the module holding it calls "
                                  "its members (use Sequential for a chain)")

    def backward(self, dy):
        raise NotImplementedError("ModuleList has no backward: the module holding it calls "
                                  "its members' backward (use Sequential for a chain)")


class ModuleDict(Module):
    """Modules by name, in insertion order, as ``torch.nn.ModuleDict``: state-dict
    keys are ``"<dict>.<name>.weight"``."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] = ()):
        super().__init__()
        self.update(modules)

    def update(self, modules) -> None:
        items = modules.items() if isinstance(modules, Mapping) else modules
        for name, module in items:
            self[name] = module

    def __setitem__(self, name: str, module: Module) -> None:
        if not isinstance(name, str) or not name or "." in name or name in vars(Module()):
            raise ValueError(f"ModuleDict: key must be a non-empty string without '.', "
                             f"got {name!r}")
        setattr(self, name, _checked("ModuleDict", name, module))

    def __getitem__(self, name: str) -> Module:
        if name not in self._module_names:
            raise KeyError(name)
        return getattr(self, name)

    def __delitem__(self, name: str) -> None:
        self[name]  # KeyError if absent
        self._module_names.remove(name)
        object.__delattr__(self, name)

    def __contains__(self, name) -> bool:
        return name in self._module_names

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._module_names))

    def keys(self) -> list[str]:
        return list(self._module_names)

    def values(self) -> list[Module]:
        return list(self.children())

    def items(self) -> list[tuple[str, Module]]:
        return list(self.named_children())

    def forward(self, x):
        raise NotImplementedError("ModuleDict has no forward: the module holding it calls "
                                  "its members")

    def backward(self, dy):
        raise NotImplementedError("ModuleDict has no backward: the module holding it calls "
                                  "its members' backward")
