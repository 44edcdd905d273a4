"""The declared torch range is true: the installed torch is inside it, and its lower bound is at
least the first release of every torch API with a version floor that the package calls.

The first releases below were read from the published wheels' Python sources (torch 2.4.1,
2.5.1, 2.6.0 and 2.7.0): each name is absent from the release before the one given and present
in it. Add an API here when the package starts calling one newer than the bound.
"""

import re
from pathlib import Path

import tomllib
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

#: API (as written in the package's source) → the first torch release that has it
FLOORS = {
    "torch.compiler.is_exporting": "2.7",  # absent from 2.6.0; layers call it on every forward
    "nn.utils.get_total_norm": "2.6",  # public from 2.6.0 (private _get_total_norm in 2.5.1)
    "nn.utils.clip_grads_with_norm_": "2.6",
    "Dim.AUTO": "2.5",  # torch.export's automatic dynamic shapes, absent from 2.4.1
    "aoti_compile_and_package": "2.6",  # AOTInductor packaging (named in rnnkit.export's docs)
}


def torch_requirement() -> Requirement:
    """The torch entry of pyproject.toml's dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    assert len(found) == 1, deps
    return found[0]


def lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"torch needs exactly one lower bound (>=), got {req.specifier}"
    return bounds[0]


def test_the_installed_torch_is_inside_the_declared_range():
    req = torch_requirement()
    installed = Version(torch.__version__).base_version  # 2.13.0+cpu → 2.13.0
    assert req.specifier.contains(installed), f"torch {torch.__version__} is outside pyproject's {req}"


def test_the_lower_bound_has_every_api_the_package_calls():
    bound = lower_bound(torch_requirement())
    source = "\n".join(p.read_text() for p in (ROOT / "rnnkit").rglob("*.py"))
    used = {api: floor for api, floor in FLOORS.items() if re.search(rf"\b{re.escape(api)}\b", source)}
    assert "torch.compiler.is_exporting" in used and "nn.utils.get_total_norm" in used  # the scan sees the calls
    newer = {api: floor for api, floor in used.items() if Version(floor) > bound}
    assert not newer, f"pyproject says torch>={bound}, but the package calls APIs first released later: {newer}"
    assert bound == max(Version(f) for f in used.values()), (
        "the bound is higher than any listed API needs: say why here"
    )


def test_the_listed_apis_exist_in_the_installed_torch():
    import torch._inductor
    from torch.export import Dim

    assert callable(torch.compiler.is_exporting)
    assert callable(torch.nn.utils.get_total_norm) and callable(torch.nn.utils.clip_grads_with_norm_)
    assert Dim.AUTO is not None and callable(torch._inductor.aoti_compile_and_package)


def test_the_readme_states_the_bound_and_the_tested_version():
    text = (ROOT / "README.md").read_text()
    bound = lower_bound(torch_requirement())
    assert f"torch ≥ {bound}" in text
    installed = Version(torch.__version__).base_version
    assert re.search(rf"[Tt]ested[^.]*\b{re.escape(installed)}\b", text), (
        f"the README should say which torch the tests ran on ({installed})"
    )
